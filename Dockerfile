# Keel broker image: `docker build -t keel .` (docker-compose.yml builds it for you).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY protocol ./protocol
COPY wal ./wal
COPY objectstore ./objectstore
COPY metadata ./metadata
COPY broker ./broker
COPY bench ./bench
RUN pip install --no-cache-dir .
EXPOSE 9092
ENTRYPOINT ["keel", "serve"]
