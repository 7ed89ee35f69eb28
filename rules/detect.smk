# Detection: a temporal PCA basis fitted once, then detection + features per chunk.


rule feature_basis:
    input:
        chunks=get_pca_sample,
        noise=RESULTS + "/{recording}/preprocess/noise.h5",
    output:
        basis=RESULTS + "/{recording}/detect/basis.h5",
    params:
        recording=get_recording,
        plan=get_plan,
        sample_chunks=get_pca_chunks,
        detect=config["detect"],
        seed=config["seed"],
        code=CODE_VERSION,
    log:
        LOGS + "/feature_basis.log",
    benchmark:
        BENCH + "/feature_basis.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/feature_basis.py"


rule detect:
    input:
        chunks=get_preprocessed_window("detect"),
        noise=RESULTS + "/{recording}/preprocess/noise.h5",
        basis=RESULTS + "/{recording}/detect/basis.h5",
    output:
        peaks=temp(RESULTS + "/{recording}/detect/t{chunk}.npz"),
    params:
        recording=get_recording,
        chunk=get_chunk,
        margin_samples=get_margin("detect"),
        detect=config["detect"],
        code=CODE_VERSION,
    resources:
        mem_mb=get_job_mem_mb,
    log:
        LOGS + "/detect/t{chunk}.log",
    benchmark:
        BENCH + "/detect/t{chunk}.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/detect.py"


rule merge_spikes:
    input:
        peaks=get_detected,
        basis=RESULTS + "/{recording}/detect/basis.h5",
    output:
        spikes=RESULTS + "/{recording}/spikes.h5",
    params:
        recording=get_recording,
        code=CODE_VERSION,
    log:
        LOGS + "/merge_spikes.log",
    benchmark:
        BENCH + "/merge_spikes.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/merge_spikes.py"
