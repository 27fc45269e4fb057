"""Lava Processes (process.py) and their ProcessModels (models.py) for SFN artifacts.

Lava's compiler finds ProcessModels by executing every module in a Process's folder, so this
package holds those two modules and nothing else.
"""
