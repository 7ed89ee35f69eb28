# shardsort: one spike sort cut into many small independent jobs.
#   snakemake --cores N                       sort every recording in the table
#   snakemake --cores N --config recordings=my.tsv
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


report: "report/workflow.rst"


validate(config, "config/schema.yaml")


include: "rules/common.smk"
include: "rules/demo.smk"
include: "rules/preprocess.smk"
include: "rules/motion.smk"
include: "rules/detect.smk"
include: "rules/sort.smk"
include: "rules/nn.smk"
include: "rules/outputs.smk"
include: "rules/report.smk"


rule all:
    input:
        get_final_outputs(),
    default_target: True
