"""Jobs: the file-based queue, the worker that runs heavy work outside the app, and the resource
monitor that measures each stage.
"""
