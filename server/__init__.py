"""The aiohttp server: websocket chat, HTTP API, the browser UI and the CLI."""
