# Preprocessing: band-pass per channel shard x time chunk, global noise statistics
# and whitening computed once, then reference/scale/whiten per time chunk.


rule filter:
    input:
        raw=get_raw,
    output:
        data=temp(RESULTS + "/{recording}/preprocess/filtered/c{shard}_t{chunk}.f32"),
        sidecar=temp(RESULTS + "/{recording}/preprocess/filtered/c{shard}_t{chunk}.f32.yaml"),
    params:
        recording=get_recording,
        chunk=get_chunk,
        shard=get_shard,
        margin_samples=get_margin("filter"),
        preprocess=config["preprocess"],
        code=CODE_VERSION,
    resources:
        mem_mb=get_job_mem_mb,
    log:
        LOGS + "/filter/c{shard}_t{chunk}.log",
    benchmark:
        BENCH + "/filter/c{shard}_t{chunk}.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/filter.py"


rule noise_stats:
    input:
        filtered=get_noise_sample,
        sidecars=get_noise_sample_sidecars,
    output:
        noise=RESULTS + "/{recording}/preprocess/noise.h5",
        report=RESULTS + "/{recording}/bad_channels.tsv",
    params:
        recording=get_recording,
        preprocess=config["preprocess"],
        code=CODE_VERSION,
    log:
        LOGS + "/noise_stats.log",
    benchmark:
        BENCH + "/noise_stats.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/noise_stats.py"


rule whitening:
    input:
        filtered=get_noise_sample,
        sidecars=get_noise_sample_sidecars,
        noise=RESULTS + "/{recording}/preprocess/noise.h5",
    output:
        whitening=RESULTS + "/{recording}/preprocess/whitening.h5",
    params:
        recording=get_recording,
        preprocess=config["preprocess"],
        threshold=config["detect"]["threshold"],
        exclude_ms=config["detect"]["ms_after"],
        code=CODE_VERSION,
    log:
        LOGS + "/whitening.log",
    benchmark:
        BENCH + "/whitening.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/whitening.py"


rule preprocess:
    input:
        filtered=get_filtered_chunk,
        sidecars=get_filtered_chunk_sidecars,
        noise=RESULTS + "/{recording}/preprocess/noise.h5",
        whitening=RESULTS + "/{recording}/preprocess/whitening.h5",
    output:
        data=RESULTS + "/{recording}/preprocess/chunks/t{chunk}.bin",
        sidecar=RESULTS + "/{recording}/preprocess/chunks/t{chunk}.bin.yaml",
    params:
        recording=get_recording,
        chunk=get_chunk,
        preprocess=config["preprocess"],
        code=CODE_VERSION,
    resources:
        mem_mb=get_job_mem_mb,
    log:
        LOGS + "/preprocess/t{chunk}.log",
    benchmark:
        BENCH + "/preprocess/t{chunk}.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/preprocess.py"
