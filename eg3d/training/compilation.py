"""run.compile: the networks' forward and backward passes of the Gmain, Greg and Dmain phases under torch.compile.

The modules are compiled in place (`nn.Module.compile`), not wrapped (`torch.compile(module)`), so the
trainer, the optimizers and the gradient syncs keep the same objects and checkpoints keep the same
state_dict keys (no `_orig_mod.` prefix): a checkpoint written compiled loads eager and the other way
round. The syncs reduce `.grad` themselves and never wrap the networks in DistributedDataParallel, so
PyTorch's advice on compiling with DDP (compile the DDP-wrapped module) has nothing to apply to.

Dreg stays eager: R1 backpropagates through D's input gradient (a double backward), which compiled
graphs (AOT autograd) do not support; `EG3DLoss.d_r1` runs D under the "force_eager" stance. G_ema is
not compiled: it only runs at snapshots, at batch sizes of its own.

Shapes are static within a neural rendering resolution; when the schedule changes the resolution,
the renderer, the super-resolution and D are compiled again (once with a symbolic resolution, by
dynamo's automatic dynamic shapes, which then serves the rest of a fade). The trainer counts the
graphs compiled in each phase and times that phase as compile time (`compile/graphs`,
`compile/seconds`), not as step time.
"""

import contextlib
import sys

import torch

# Inductor draws random numbers with its own generator; falling back to torch's keeps a step's noise,
# ray jitter and importance samples the same compiled or eager, so runs and resumes stay reproducible.
OPTIONS = {"fallback_random": True}


def compile_networks(G: torch.nn.Module, D: torch.nn.Module) -> None:
    """Compile in place the parts of G the losses call (mapping, tri-plane backbone, renderer with its
    decoder, super-resolution) and the whole of D."""
    for module in (G.mapping, G.backbone, G.renderer, G.superresolution, D):
        module.compile(options=OPTIONS)


# torch.compile's machinery (torch._dynamo) takes seconds to import: an eager run never loads it.

def compiled_graphs() -> int:
    """Graphs compiled by torch.compile in this process so far (first compiles and recompiles)."""
    dynamo = sys.modules.get("torch._dynamo")
    return dynamo.utils.counters["stats"]["unique_graphs"] if dynamo is not None else 0


def eager():
    """A context in which compiled modules run their eager code."""
    if "torch._dynamo" not in sys.modules:  # nothing was compiled
        return contextlib.nullcontext()
    return torch.compiler.set_stance("force_eager")
