"""The contracts between stages, as files: the run folder (``run_dir``) and the exported model
folder with its ``model.json`` (``model_package``). Writers and readers of those files import
their layout from here, never from each other. No torch.
"""
