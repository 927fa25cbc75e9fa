# CPU image of the dashboard: docker build -t fer-core . && docker run -p 8501:8501 fer-core
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 curl \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt pyproject.toml README.md ./
# CPU wheels of torch/torchvision first, so the requirements do not pull the CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.14.1 torchvision==0.29.1 \
    && pip install -r requirements.txt

COPY . .
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 1000 fer \
    && mkdir -p data cache runs \
    && chown -R fer /app
USER fer

EXPOSE 8501
VOLUME ["/app/data", "/app/cache", "/app/runs"]
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s CMD curl -fs http://localhost:8501/_stcore/health || exit 1
ENTRYPOINT ["streamlit", "run", "dashboard/Home.py", "--server.address=0.0.0.0", "--server.port=8501"]
