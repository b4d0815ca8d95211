"""Started twice by the test with only SLURM variables set, as srun would: init and all-reduce."""
import json
import sys

import torch

from rlhf_ds.engine import all_reduce_sum, init_distributed, shutdown_distributed

info = init_distributed("cpu")
total = all_reduce_sum(torch.tensor(float(info.rank + 1)))
with open(f"{sys.argv[1]}.rank{info.rank}", "w") as f:
    json.dump({"rank": info.rank, "world": info.world_size, "local_rank": info.local_rank, "sum": float(total),
               "backend": info.backend}, f)
shutdown_distributed()
