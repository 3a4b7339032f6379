"""The fine-tuning config files (configs/finetune_<mode>.py) as the tests load them."""
import importlib.util
import os

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def finetune(mode: str, arg: str = "", **finetune_fields):
    """configs/finetune_<mode>.py:<arg> with config.finetune fields set (paths, names) as overrides would."""
    path = os.path.join(ROOT, "configs", f"finetune_{mode}.py")
    spec = importlib.util.spec_from_file_location(f"finetune_{mode}_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config(arg)
    config.finetune.update(finetune_fields)
    return config
