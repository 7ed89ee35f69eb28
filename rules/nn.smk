# Network detection (detect.method: nn), YASS style, in two passes:
#   pass 1: the threshold sort up to templates, under results/{recording}/pass1/;
#   training: detector and collision-triage networks trained on spikes made from
#     the pass-1 templates in noise with the recording's own covariance, under
#     results/{recording}/nn/ (skipped with a fixed model, detect.nn_model);
#   pass 2: detect_nn per chunk; spikes.h5 and everything after it as in the
#     threshold workflow, except that collided spikes skip clustering (the
#     deconvolution still finds them).
# With detect.method: threshold none of these rules is part of the DAG.


use rule detect as detect_pass1 with:
    output:
        peaks=bulk("results/{recording}/pass1/detect/t{chunk}.npz"),
    log:
        "results/{recording}/logs/detect_pass1/t{chunk}.log",
    benchmark:
        "results/{recording}/benchmarks/detect_pass1/t{chunk}.tsv"


use rule merge_spikes as merge_spikes_pass1 with:
    input:
        peaks=get_detected_pass1,
        basis="results/{recording}/detect/basis.h5",
    output:
        spikes="results/{recording}/pass1/spikes.h5",
    log:
        "results/{recording}/logs/merge_spikes_pass1.log",
    benchmark:
        "results/{recording}/benchmarks/merge_spikes_pass1.tsv"


use rule cluster as cluster_pass1 with:
    input:
        spikes="results/{recording}/pass1/spikes.h5",
    output:
        labels=bulk("results/{recording}/pass1/cluster/g{group}.npz"),
    log:
        "results/{recording}/logs/cluster_pass1/g{group}.log",
    benchmark:
        "results/{recording}/benchmarks/cluster_pass1/g{group}.tsv"


use rule merge_clusters as merge_clusters_pass1 with:
    input:
        labels=get_clustered_pass1,
        spikes="results/{recording}/pass1/spikes.h5",
    output:
        clusters="results/{recording}/pass1/clusters.h5",
    log:
        "results/{recording}/logs/merge_clusters_pass1.log",
    benchmark:
        "results/{recording}/benchmarks/merge_clusters_pass1.tsv"


use rule template_sums as template_sums_pass1 with:
    input:
        chunks=get_preprocessed_window("templates"),
        spikes="results/{recording}/pass1/spikes.h5",
        clusters="results/{recording}/pass1/clusters.h5",
    output:
        sums=bulk("results/{recording}/pass1/templates/t{chunk}.npz"),
    log:
        "results/{recording}/logs/template_sums_pass1/t{chunk}.log",
    benchmark:
        "results/{recording}/benchmarks/template_sums_pass1/t{chunk}.tsv"


use rule templates as templates_pass1 with:
    input:
        sums=get_template_parts_pass1,
        spikes="results/{recording}/pass1/spikes.h5",
        clusters="results/{recording}/pass1/clusters.h5",
        noise_chunks=get_noise_chunks,
    output:
        templates="results/{recording}/pass1/templates.h5",
        basis=bulk("results/{recording}/pass1/deconv_basis.npz"),
    log:
        "results/{recording}/logs/templates_pass1.log",
    benchmark:
        "results/{recording}/benchmarks/templates_pass1.tsv"


rule train_detector:
    input:
        templates="results/{recording}/pass1/templates.h5",
        noise="results/{recording}/preprocess/noise.h5",
        noise_chunks=get_noise_chunks,
    output:
        model="results/{recording}/nn/detector/model.keras",
        sidecar="results/{recording}/nn/detector/model.yaml",
    params:
        kind="detector",
        recording=get_recording,
        segments=get_noise_segments,
        nn=get_nn_training,
        threshold=config["detect"]["threshold"],
        preprocess=config["preprocess"],
        seed=config["seed"],
        code=CODE_VERSION,
    threads: 1
    resources:
        mem_mb=2000 + TENSORFLOW_JOB_MB,
    log:
        "results/{recording}/logs/train_detector.log",
    benchmark:
        "results/{recording}/benchmarks/train_detector.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/train_nn.py"


use rule train_detector as train_triage with:
    output:
        model="results/{recording}/nn/triage/model.keras",
        sidecar="results/{recording}/nn/triage/model.yaml",
    params:
        kind="triage",
        recording=get_recording,
        segments=get_noise_segments,
        nn=get_nn_training,
        threshold=config["detect"]["threshold"],
        preprocess=config["preprocess"],
        seed=config["seed"],
        code=CODE_VERSION,
    log:
        "results/{recording}/logs/train_triage.log",
    benchmark:
        "results/{recording}/benchmarks/train_triage.tsv"


rule detect_nn:
    input:
        unpack(get_nn_models),
        chunks=get_preprocessed_window("detect_nn"),
        noise="results/{recording}/preprocess/noise.h5",
        basis="results/{recording}/detect/basis.h5",
    output:
        peaks=bulk("results/{recording}/detect_nn/t{chunk}.npz"),
    params:
        recording=get_recording,
        chunk=get_chunk,
        margin_samples=get_margin("detect_nn"),
        nn=get_nn_detection,
        whiten=config["preprocess"]["whiten"],
        code=CODE_VERSION,
    threads: 1
    resources:
        mem_mb=get_nn_job_mem_mb,
    log:
        "results/{recording}/logs/detect_nn/t{chunk}.log",
    benchmark:
        "results/{recording}/benchmarks/detect_nn/t{chunk}.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/detect_nn.py"
