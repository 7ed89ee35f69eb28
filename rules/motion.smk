# Drift (motion) correction, used when motion.enabled: depth histograms of
# peaks per chunk, one global registration, then every preprocessed chunk is
# resampled at the displaced channel positions. The sort reads the corrected
# chunks (see preprocessed_paths in common.smk).


rule motion_peaks:
    input:
        chunks=get_uncorrected_window("detect"),
        noise="results/{recording}/preprocess/noise.h5",
    output:
        histogram=bulk("results/{recording}/motion/peaks/t{chunk}.npz"),
    params:
        recording=get_recording,
        chunk=get_chunk,
        margin_samples=get_margin("detect"),
        detect=get_settings("detect", MOTION_PEAK_DETECT_KEYS),
        motion=get_settings("motion", MOTION_PEAK_KEYS),
        code=CODE_VERSION,
    resources:
        mem_mb=get_job_mem_mb,
    log:
        "results/{recording}/logs/motion_peaks/t{chunk}.log",
    benchmark:
        "results/{recording}/benchmarks/motion_peaks/t{chunk}.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/motion_peaks.py"


rule motion:
    input:
        histograms=get_motion_histograms,
    output:
        motion="results/{recording}/motion/motion.h5",
        table="results/{recording}/motion/displacement.tsv",
        figure=report(
            "results/{recording}/report/motion.png",
            caption="../report/motion.rst",
            category="{recording}",
            subcategory="1 overview",
            labels={"figure": "drift estimate"},
        ),
    params:
        recording=get_recording,
        motion=get_settings("motion", MOTION_ESTIMATE_KEYS),
        code=CODE_VERSION,
    log:
        "results/{recording}/logs/motion.log",
    benchmark:
        "results/{recording}/benchmarks/motion.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/motion.py"


rule correct:
    input:
        chunk="results/{recording}/preprocess/chunks/t{chunk}.bin",
        noise="results/{recording}/preprocess/noise.h5",
        motion="results/{recording}/motion/motion.h5",
    output:
        data=bulk("results/{recording}/motion/chunks/t{chunk}.bin"),
        # Not temp: its consumers read it next to the chunk without declaring it.
        sidecar="results/{recording}/motion/chunks/t{chunk}.bin.yaml",
    params:
        recording=get_recording,
        chunk=get_chunk,
        motion=get_settings("motion", MOTION_CORRECT_KEYS),
        code=CODE_VERSION,
    resources:
        mem_mb=get_job_mem_mb,
    log:
        "results/{recording}/logs/correct/t{chunk}.log",
    benchmark:
        "results/{recording}/benchmarks/correct/t{chunk}.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/correct.py"
