# The sort: clustering per channel group, templates, deconvolution per chunk.


rule cluster:
    input:
        spikes="results/{recording}/spikes.h5",
    output:
        labels=bulk("results/{recording}/cluster/g{group}.npz"),
    params:
        group=get_group,
        cluster=config["cluster"],
        seed=config["seed"],
        code=CODE_VERSION,
    log:
        "results/{recording}/logs/cluster/g{group}.log",
    benchmark:
        "results/{recording}/benchmarks/cluster/g{group}.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/cluster.py"


rule merge_clusters:
    input:
        labels=get_clustered,
        spikes="results/{recording}/spikes.h5",
    output:
        clusters="results/{recording}/clusters.h5",
    params:
        templates=config["templates"],
        seed=config["seed"],
        code=CODE_VERSION,
    log:
        "results/{recording}/logs/merge_clusters.log",
    benchmark:
        "results/{recording}/benchmarks/merge_clusters.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/merge_clusters.py"


rule template_sums:
    input:
        chunks=get_preprocessed_window("templates"),
        spikes="results/{recording}/spikes.h5",
        clusters="results/{recording}/clusters.h5",
    output:
        sums=bulk("results/{recording}/templates/t{chunk}.npz"),
    params:
        recording=get_recording,
        chunk=get_chunk,
        margin_samples=get_margin("templates"),
        detect=get_detect_settings,
        code=CODE_VERSION,
    resources:
        mem_mb=get_job_mem_mb,
    log:
        "results/{recording}/logs/template_sums/t{chunk}.log",
    benchmark:
        "results/{recording}/benchmarks/template_sums/t{chunk}.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/template_sums.py"


rule templates:
    input:
        sums=get_template_parts,
        spikes="results/{recording}/spikes.h5",
        clusters="results/{recording}/clusters.h5",
        noise_chunks=get_noise_chunks,
    output:
        templates="results/{recording}/templates.h5",
        basis="results/{recording}/deconv_basis.npz",
    params:
        recording=get_recording,
        detect=get_detect_settings,
        templates=config["templates"],
        segments=get_noise_segments,
        seed=config["seed"],
        code=CODE_VERSION,
    log:
        "results/{recording}/logs/templates.log",
    benchmark:
        "results/{recording}/benchmarks/templates.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/templates.py"


rule deconvolve:
    input:
        chunks=get_preprocessed_window("deconvolve"),
        templates="results/{recording}/templates.h5",
        deconv_basis="results/{recording}/deconv_basis.npz",
        basis="results/{recording}/detect/basis.h5",
    output:
        spikes=bulk("results/{recording}/deconvolve/t{chunk}.npz"),
    params:
        recording=get_recording,
        chunk=get_chunk,
        margin_samples=get_margin("deconvolve"),
        deconvolve=config["deconvolve"],
        max_memory_mb=config["shards"]["max_memory_mb"],
        code=CODE_VERSION,
    resources:
        mem_mb=get_job_mem_mb,
    log:
        "results/{recording}/logs/deconvolve/t{chunk}.log",
    benchmark:
        "results/{recording}/benchmarks/deconvolve/t{chunk}.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/deconvolve.py"


rule merge_units:
    input:
        spikes=get_deconvolved,
        templates="results/{recording}/templates.h5",
        deconv_basis="results/{recording}/deconv_basis.npz",
        noise="results/{recording}/preprocess/noise.h5",
        whitening="results/{recording}/preprocess/whitening.h5",
        basis="results/{recording}/detect/basis.h5",
    output:
        sorting="results/{recording}/sorting.h5",
    params:
        recording=get_recording,
        plan=get_plan,
        deconvolve=config["deconvolve"],
        merge=config["merge"],
        max_shift_ms=config["templates"]["merge_max_shift_ms"],
        split_threshold=config["cluster"]["split_threshold"],
        seed=config["seed"],
        code=CODE_VERSION,
    log:
        "results/{recording}/logs/merge_units.log",
    benchmark:
        "results/{recording}/benchmarks/merge_units.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/merge_units.py"
