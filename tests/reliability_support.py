"""Shared by the ``test_reliability_*`` files: what "the model is left unchanged" means, and one
torch thread while they run."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_globals

from mmcam.core.hooks import model_lock


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two threads
    per process made these tests ten times slower; the setting is restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hook_dicts(owner: object) -> dict[str, dict]:
    """Every hook dictionary of a module (forward, pre, backward, state-dict, ...), copied."""
    return {name: dict(value) for name, value in vars(owner).items() if "hooks" in name and isinstance(value, dict)}


def global_hook_dicts() -> dict[str, dict]:
    """torch's global module hooks (``register_module_forward_hook`` and friends), copied."""
    return {
        name: dict(getattr(module_globals, name))
        for name in dir(module_globals)
        if name.startswith("_global_") and isinstance(getattr(module_globals, name), dict)
    }


def hook_count(model: nn.Module) -> int:
    """Hooks on all of ``model``'s modules plus torch's global module hooks."""
    per_module = sum(len(hooks) for module in model.modules() for hooks in hook_dicts(module).values())
    return per_module + sum(len(hooks) for hooks in global_hook_dicts().values())


def full_state(model: nn.Module) -> dict:
    """Everything an explanation must leave alone: modes, flags, values and their version
    counters (no in-place write, even of equal values), .grad tensors, every hook dictionary of
    every module and parameter, the module tree, and torch's global hooks, grad mode and
    function-mode stack."""
    return {
        "training": {name: module.training for name, module in model.named_modules()},
        "tree": [(name, type(module).__name__, id(module), sorted(vars(module))) for name, module in model.named_modules()],
        "requires_grad": {name: p.requires_grad for name, p in model.named_parameters()},
        "values": {name: (t.detach().clone(), t._version) for name, t in [*model.named_parameters(), *model.named_buffers()]},
        "grad": {
            name: None if p.grad is None else (id(p.grad), p.grad.clone(), p.grad._version)
            for name, p in model.named_parameters()
        },
        "module_hooks": {name: hook_dicts(module) for name, module in model.named_modules()},
        "tensor_hooks": {
            name: (p._backward_hooks, getattr(p, "_post_accumulate_grad_hooks", None)) for name, p in model.named_parameters()
        },
        "global_hooks": global_hook_dicts(),
        "grad_enabled": torch.is_grad_enabled(),
        "function_modes": torch._C._len_torch_function_stack(),
    }


def assert_unchanged(before: dict, after: dict) -> None:
    for key in ("training", "tree", "requires_grad", "module_hooks", "tensor_hooks", "global_hooks", "grad_enabled", "function_modes"):
        assert before[key] == after[key], key
    for name, (value, version) in before["values"].items():
        assert torch.equal(value, after["values"][name][0]) and version == after["values"][name][1], name
    for name, grad in before["grad"].items():
        if grad is None:
            assert after["grad"][name] is None, name
        else:
            assert grad[0] == after["grad"][name][0] and grad[2] == after["grad"][name][2], name
            assert torch.equal(grad[1], after["grad"][name][1]), name


def assert_lock_free(model: nn.Module) -> None:
    """Another thread can take the model's lock at once: no call left it held."""
    taken = []

    def take() -> None:
        lock = model_lock(model)
        taken.append(lock.acquire(timeout=5))
        if taken[-1]:
            lock.release()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join()
    assert taken == [True]
