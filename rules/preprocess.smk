# Preprocessing: global noise statistics and whitening computed once from
# filtered noise segments, then per time chunk: band-pass, reference, scale and
# whiten. With one channel shard (shards.channels_per_shard: auto) the preprocess
# job filters its chunk itself; with several, filter jobs band-pass each channel
# shard x time chunk first and the preprocess job joins their files.


rule filter:
    input:
        raw=get_raw,
        after=get_filter_gate,
    output:
        data=bulk("results/{recording}/preprocess/filtered/c{shard}_t{chunk}.f32"),
        sidecar=bulk("results/{recording}/preprocess/filtered/c{shard}_t{chunk}.f32.yaml"),
    params:
        recording=get_recording,
        chunk=get_chunk,
        shard=get_shard,
        margin_samples=get_margin("filter"),
        band=get_band,
        sos=get_sos,
        sample_shifts=get_sample_shifts,
        # Stored compressed (float32 rounded to 7 mantissa bits) unless
        # compression: none; see scripts/filter.py.
        compression=config["preprocess"]["compression"],
        code=CODE_VERSION,
    resources:
        mem_mb=get_job_mem_mb,
    log:
        "results/{recording}/logs/filter/c{shard}_t{chunk}.log",
    benchmark:
        "results/{recording}/benchmarks/filter/c{shard}_t{chunk}.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/filter.py"


rule filter_noise_sample:
    """The filter of one channel shard x one noise segment (a few seconds, see
    noise_segments), for noise_stats and whitening."""
    input:
        raw=get_raw,
    output:
        data=bulk("results/{recording}/preprocess/noise_sample/c{shard}_s{segment}.f32"),
        sidecar=bulk("results/{recording}/preprocess/noise_sample/c{shard}_s{segment}.f32.yaml"),
    params:
        recording=get_recording,
        chunk=get_segment,
        shard=get_shard,
        margin_samples=get_margin("filter"),
        band=get_band,
        sos=get_sos,
        sample_shifts=get_sample_shifts,
        # Small (a few seconds per segment): kept exact for the noise statistics.
        compression="none",
        code=CODE_VERSION,
    resources:
        mem_mb=get_job_mem_mb,
    log:
        "results/{recording}/logs/filter_noise_sample/c{shard}_s{segment}.log",
    benchmark:
        "results/{recording}/benchmarks/filter_noise_sample/c{shard}_s{segment}.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/filter.py"


rule noise_stats:
    input:
        filtered=get_noise_sample,
        sidecars=get_noise_sample_sidecars,
    output:
        noise="results/{recording}/preprocess/noise.h5",
        report="results/{recording}/bad_channels.tsv",
    params:
        recording=get_recording,
        segments=get_noise_segments,
        preprocess=config["preprocess"],
        code=CODE_VERSION,
    log:
        "results/{recording}/logs/noise_stats.log",
    benchmark:
        "results/{recording}/benchmarks/noise_stats.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/noise_stats.py"


rule whitening:
    input:
        filtered=get_noise_sample,
        sidecars=get_noise_sample_sidecars,
        noise="results/{recording}/preprocess/noise.h5",
    output:
        whitening="results/{recording}/preprocess/whitening.h5",
    params:
        recording=get_recording,
        segments=get_noise_segments,
        preprocess=config["preprocess"],
        code=CODE_VERSION,
    log:
        "results/{recording}/logs/whitening.log",
    benchmark:
        "results/{recording}/benchmarks/whitening.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/whitening.py"


rule preprocess:
    input:
        filtered=get_filtered_chunk,
        sidecars=get_filtered_chunk_sidecars,
        raw=get_preprocess_raw,
        noise="results/{recording}/preprocess/noise.h5",
        whitening="results/{recording}/preprocess/whitening.h5",
    # Before the filter jobs of other chunks: the scheduler otherwise prefers
    # jobs with the largest input (a filter job reads the raw file), and every
    # chunk's filtered shards (float32: 2x the raw chunk, 0.85x compressed)
    # would pile up.
    priority: 1
    output:
        data=bulk("results/{recording}/preprocess/chunks/t{chunk}.bin"),
        sidecar="results/{recording}/preprocess/chunks/t{chunk}.bin.yaml",
    params:
        recording=get_recording,
        chunk=get_chunk,
        preprocess=config["preprocess"],
        filter=get_preprocess_filter,
        code=CODE_VERSION,
    resources:
        mem_mb=get_job_mem_mb,
    log:
        "results/{recording}/logs/preprocess/t{chunk}.log",
    benchmark:
        "results/{recording}/benchmarks/preprocess/t{chunk}.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/preprocess.py"
