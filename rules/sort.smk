# The sort: clustering per channel group, templates, deconvolution per chunk.


rule cluster:
    input:
        spikes=RESULTS + "/{recording}/spikes.h5",
    output:
        labels=temp(RESULTS + "/{recording}/cluster/g{group}.npz"),
    params:
        group=get_group,
        cluster=config["cluster"],
        seed=config["seed"],
        code=CODE_VERSION,
    log:
        LOGS + "/cluster/g{group}.log",
    benchmark:
        BENCH + "/cluster/g{group}.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/cluster.py"


rule merge_clusters:
    input:
        labels=get_clustered,
        spikes=RESULTS + "/{recording}/spikes.h5",
    output:
        clusters=RESULTS + "/{recording}/clusters.h5",
    params:
        templates=config["templates"],
        seed=config["seed"],
        code=CODE_VERSION,
    log:
        LOGS + "/merge_clusters.log",
    benchmark:
        BENCH + "/merge_clusters.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/merge_clusters.py"


rule template_sums:
    input:
        chunks=get_preprocessed_window("templates"),
        spikes=RESULTS + "/{recording}/spikes.h5",
        clusters=RESULTS + "/{recording}/clusters.h5",
    output:
        sums=temp(RESULTS + "/{recording}/templates/t{chunk}.npz"),
    params:
        recording=get_recording,
        chunk=get_chunk,
        margin_samples=get_margin("templates"),
        detect=config["detect"],
        code=CODE_VERSION,
    resources:
        mem_mb=get_job_mem_mb,
    log:
        LOGS + "/template_sums/t{chunk}.log",
    benchmark:
        BENCH + "/template_sums/t{chunk}.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/template_sums.py"


rule templates:
    input:
        sums=get_template_parts,
        clusters=RESULTS + "/{recording}/clusters.h5",
        noise_chunks=get_noise_chunks,
    output:
        templates=RESULTS + "/{recording}/templates.h5",
        basis=RESULTS + "/{recording}/deconv_basis.npz",
    params:
        recording=get_recording,
        detect=config["detect"],
        templates=config["templates"],
        threshold=config["detect"]["threshold"],
        seed=config["seed"],
        code=CODE_VERSION,
    log:
        LOGS + "/templates.log",
    benchmark:
        BENCH + "/templates.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/templates.py"


rule deconvolve:
    input:
        chunks=get_preprocessed_window("deconvolve"),
        templates=RESULTS + "/{recording}/templates.h5",
        deconv_basis=RESULTS + "/{recording}/deconv_basis.npz",
        basis=RESULTS + "/{recording}/detect/basis.h5",
    output:
        spikes=temp(RESULTS + "/{recording}/deconvolve/t{chunk}.npz"),
    params:
        recording=get_recording,
        chunk=get_chunk,
        margin_samples=get_margin("deconvolve"),
        deconvolve=config["deconvolve"],
        code=CODE_VERSION,
    resources:
        mem_mb=get_job_mem_mb,
    log:
        LOGS + "/deconvolve/t{chunk}.log",
    benchmark:
        BENCH + "/deconvolve/t{chunk}.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/deconvolve.py"


rule merge_units:
    input:
        spikes=get_deconvolved,
        templates=RESULTS + "/{recording}/templates.h5",
        noise=RESULTS + "/{recording}/preprocess/noise.h5",
        whitening=RESULTS + "/{recording}/preprocess/whitening.h5",
        basis=RESULTS + "/{recording}/detect/basis.h5",
    output:
        sorting=RESULTS + "/{recording}/sorting.h5",
    params:
        recording=get_recording,
        plan=get_plan,
        config=config,
        deconvolve=config["deconvolve"],
        code=CODE_VERSION,
    log:
        LOGS + "/merge_units.log",
    benchmark:
        BENCH + "/merge_units.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/merge_units.py"
