"""What a `luigi --module workflows ...` command line would hand its jobs, without running
them: ``python tests/deploy_probe.py --module workflows TASK ...`` in the command's working
directory and environment prints, as JSON, the spark-submit command of its ALS and the
network and baseline settings of its training and choosing."""
import json
import sys

import luigi
from luigi.cmdline_parser import CmdlineParser


def main(argv: list[str]) -> None:
    with CmdlineParser.global_instance(argv) as parser:  # as luigi's own command does
        root = parser.get_task_obj()
        found, todo = {}, [root]
        while todo:
            task = todo.pop()
            if type(task).__name__ not in found:
                found[type(task).__name__] = task
                todo.extend(luigi.task.flatten(task.requires()))
        print(json.dumps({"spark": found["TrainAls"].spark_command(),
                          "net": found["TrainModel"].net,
                          "bow_codebook": found["ChooseModel"].bow_codebook}, default=dict))


if __name__ == "__main__":
    main(sys.argv[1:])
