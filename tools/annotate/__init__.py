"""``samtriton annotate``: a local web app for click-to-segment annotation on the session
backend, which also answers Label Studio's ML backend API.

Needs the ``annotate`` extra (Starlette, uvicorn, pycocotools); ``import samtriton`` never
imports this package.
"""
