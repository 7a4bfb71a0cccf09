"""The operator's surface: a web app (live page, REST API with OpenAPI docs, Server-Sent Events) on
FastAPI + uvicorn. `facestream serve` runs it alone (gallery management, identify, verify);
`facestream run --dashboard HOST:PORT` runs it as one more supervised child of the pipeline
(stream/pipeline/stages/dashboard.py), fed by the results PUB and the sink's preview."""
