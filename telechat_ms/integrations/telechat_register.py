"""Entry for MindFormers' `run_mindformer.py --register_path <this directory>`.

A yaml naming `auto_register: telechat_register.TelechatConfig` (model.model_config) makes MindFormers load this
file; importing it imports telechat_ms.integrations.mindformers, which registers all telechat_ms classes.
Only absolute imports here: MindFormers copies this file into ./modules before importing it.
"""
from telechat_ms.integrations.mindformers import MFTelechatConfig as TelechatConfig  # noqa: F401
from telechat_ms.integrations.mindformers import MFTelechatForCausalLM as TelechatForCausalLM  # noqa: F401
from telechat_ms.integrations.mindformers import MFTelechatTokenizer as TelechatTokenizer  # noqa: F401
from telechat_ms.integrations.mindformers import MFTelechatTrainOneStepCell as TelechatTrainOneStepCell  # noqa: F401
