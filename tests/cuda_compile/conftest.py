"""The PTX compile check needs numba's real CUDA target: it is deselected (not skipped)
when this process runs the simulator. Run it as ``NUMBA_ENABLE_CUDASIM=0 pytest tests/cuda_compile``.
"""


def pytest_collection_modifyitems(config, items):
    from numba.core import config as numba_config

    if not numba_config.ENABLE_CUDASIM:
        return
    here = [item for item in items if "cuda_compile" in str(item.fspath)]
    if here:
        config.hook.pytest_deselected(items=here)
        items[:] = [item for item in items if item not in here]
