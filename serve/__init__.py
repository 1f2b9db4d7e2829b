"""The serve stage: one process owns the index and answers many clients.

    clipsearch serve --watch ~/Pictures        # then open http://127.0.0.1:8765/

    service.py     SearchService: the open index, the warm query encoder, the searches
    app.py         the FastAPI application: the HTTP API, errors as one-line JSON, the page
    parameters.py  what a client may send: unknown parameters refused by name, blank ones unset
    security.py    the token, the login cookie, loopback by default
    files.py       originals and thumbnails by point id only, checked against the index
    duplicates.py  POST /api/duplicates: `clipsearch duplicates` over the served index, one run at a time
    connections.py a deadline for a request's headers, connections capped below the descriptor limit
    watch.py       the live index: an incremental ingest, then file-system events
    commands.py    `clipsearch serve`
    static/        the web page: plain HTML, CSS and JS, no build step

Serve composes the ingest and search stages through their public functions: the one
stage allowed to import others (the import contracts in pyproject.toml).
"""
