"""Bring work from hosted fine-tuning services into a tunesmith project.

`tunesmith import openai` reads an OpenAI fine-tuning job (the job JSON, or its files and options given as flags),
audits the files with OpenAI's format rules on top of tunesmith's own audit, maps the hyperparameters, turns the
graders into eval graders (and an RFT job's grader into the GRPO reward), and writes a project folder with one
import report listing everything that could not be carried over (docs/migrate-openai.md).
"""
