# Figures and tables that `snakemake --report report.html` embeds, per recording.


rule report_overview:
    input:
        sorting="results/{recording}/sorting.h5",
        metrics="results/{recording}/metrics.tsv",
        bad_channels="results/{recording}/bad_channels.tsv",
        # Why a sort without units has none, and what the filter zeroed.
        spikes="results/{recording}/spikes.h5",
        templates="results/{recording}/templates.h5",
        chunk_sidecars=get_uncorrected_sidecars,
    output:
        probe_map=report(
            "results/{recording}/report/probe_map.png",
            caption="../report/probe_map.rst",
            category="{recording}",
            subcategory="1 overview",
            labels={"figure": "probe map"},
        ),
        drift_raster=report(
            "results/{recording}/report/drift_raster.png",
            caption="../report/drift_raster.rst",
            category="{recording}",
            subcategory="1 overview",
            labels={"figure": "drift raster"},
        ),
        metrics=report(
            "results/{recording}/report/metrics.html",
            caption="../report/metrics.rst",
            category="{recording}",
            subcategory="1 overview",
            labels={"figure": "quality metrics (table)"},
        ),
    params:
        code=CODE_VERSION,
    log:
        "results/{recording}/logs/report_overview.log",
    benchmark:
        "results/{recording}/benchmarks/report_overview.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/report_figures.py"


rule report_units:
    input:
        sorting="results/{recording}/sorting.h5",
    output:
        waveforms=report(
            directory("results/{recording}/report/waveforms"),
            patterns=["units_{first}-{last}.png"],
            caption="../report/waveforms.rst",
            category="{recording}",
            subcategory="2 units",
            labels={"figure": "1 waveforms", "units": "{first}-{last}"},
        ),
        amplitudes=report(
            directory("results/{recording}/report/amplitudes"),
            patterns=["units_{first}-{last}.png"],
            caption="../report/amplitudes.rst",
            category="{recording}",
            subcategory="2 units",
            labels={"figure": "2 amplitudes", "units": "{first}-{last}"},
        ),
        isi=report(
            directory("results/{recording}/report/isi"),
            patterns=["units_{first}-{last}.png"],
            caption="../report/isi.rst",
            category="{recording}",
            subcategory="2 units",
            labels={"figure": "3 ISI histograms", "units": "{first}-{last}"},
        ),
        autocorrelograms=report(
            directory("results/{recording}/report/autocorrelograms"),
            patterns=["units_{first}-{last}.png"],
            caption="../report/autocorrelograms.rst",
            category="{recording}",
            subcategory="2 units",
            labels={"figure": "4 autocorrelograms", "units": "{first}-{last}"},
        ),
    params:
        units_per_page=40,
        # Shaded in ISI histograms and autocorrelograms: the ISI-violation
        # threshold of the quality metrics (Allen default).
        isi_threshold_ms=1.5,
        code=CODE_VERSION,
    log:
        "results/{recording}/logs/report_units.log",
    benchmark:
        "results/{recording}/benchmarks/report_units.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/report_figures.py"


rule report_ground_truth:
    input:
        scores="results/{recording}/ground_truth.tsv",
    output:
        accuracy=report(
            "results/{recording}/report/accuracy_vs_snr.png",
            caption="../report/accuracy_vs_snr.rst",
            category="{recording}",
            subcategory="3 ground truth",
            labels={"figure": "accuracy vs SNR"},
        ),
        table=report(
            "results/{recording}/report/ground_truth.html",
            caption="../report/ground_truth.rst",
            category="{recording}",
            subcategory="3 ground truth",
            labels={"figure": "accuracy per unit (table)"},
        ),
    params:
        well_detected_accuracy=config["ground_truth"]["well_detected_accuracy"],
        code=CODE_VERSION,
    log:
        "results/{recording}/logs/report_ground_truth.log",
    benchmark:
        "results/{recording}/benchmarks/report_ground_truth.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/report_figures.py"


rule report_runtime:
    # Runs last: every other job of the recording has written its benchmark record.
    input:
        phy="results/{recording}/phy/params.py",
        nwb="results/{recording}/sorting.nwb",
        overview="results/{recording}/report/probe_map.png",
        units="results/{recording}/report/waveforms",
        ground_truth=branch(
            get_ground_truth, then="results/{recording}/report/accuracy_vs_snr.png"
        ),
    output:
        runtime=report(
            "results/{recording}/report/runtime.png",
            caption="../report/runtime.rst",
            category="{recording}",
            subcategory="4 runtime",
            labels={"figure": "time and memory per rule"},
        ),
    params:
        benchmarks="results/{recording}/benchmarks",
        code=CODE_VERSION,
    log:
        "results/{recording}/logs/report_runtime.log",
    benchmark:
        "results/{recording}/benchmarks/report_runtime.tsv"
    conda:
        "../envs/shardsort.yaml"
    script:
        "../scripts/report_figures.py"
