# CPU image of the dashboard:
#   docker build -t fer-core . && docker run -p 8501:8501 -v fer-data:/app/data -v fer-cache:/app/cache fer-core
# CI (.ci/run) lints this file with hadolint and runs its pip commands, ENTRYPOINT and HEALTHCHECK
# in a fresh virtualenv (there is no Docker engine there); keep them in exec/JSON form.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

# OpenCV's libraries (mediapipe pulls in opencv-contrib).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt pyproject.toml README.md ./
# CPU wheels of torch/torchvision first, so the requirements do not pull the CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1 \
    && pip install -r requirements.txt

COPY . .
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 1000 --user-group fer \
    && mkdir -p data cache runs weights \
    && chown -R 1000:1000 data cache runs weights
USER 1000:1000

EXPOSE 8501
# data: datasets and synthetic grids; cache: results.sqlite; runs: evaluations and training;
# weights: the shipped model (copied into a new volume on first use) and downloaded ones.
VOLUME ["/app/data", "/app/cache", "/app/runs", "/app/weights"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4).read() != b'ok')"]
ENTRYPOINT ["python", "-m", "streamlit", "run", "dashboard/Home.py", "--server.address=0.0.0.0", "--server.port=8501", "--server.headless=true"]
