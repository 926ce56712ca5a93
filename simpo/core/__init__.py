"""Shared layer of both training recipes and the commands: argument groups, the YAML/CLI parser, model loading,
launch checks, resume, run records, reporting, plots, logging and the recipe steps SimPO and SFT share."""
