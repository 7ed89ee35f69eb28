# The bundled synthetic ground-truth recording (used by `make demo`).


rule demo_recording:
    output:
        recording=DEMO_PATH,
        geometry=DEMO_GEOMETRY,
        ground_truth=DEMO_GROUND_TRUTH,
    params:
        demo=config["demo"],
    log:
        "data/demo/demo_recording.log",
    benchmark:
        "data/demo/demo_recording.benchmark.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/make_demo.py"
