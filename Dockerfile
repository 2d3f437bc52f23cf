FROM python:3.11-slim

# llama-cpp-python compiles llama.cpp at install time.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY server ./server
COPY memory ./memory
COPY models ./models
COPY web ./web
# torch is pinned and installed first, as in scripts/venv.sh.
RUN pip install --no-cache-dir "torch==2.13.0" && pip install --no-cache-dir -e .

ENV MEMCHAT_HOST=0.0.0.0 \
    MEMCHAT_PORT=8080 \
    MEMCHAT_DATA_DIR=/data \
    HF_HUB_OFFLINE=1
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health').status != 200)"]
CMD ["memchat", "serve"]
