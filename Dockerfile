# The service image: `docker run -p 8000:8000 -e DSR_DATABASE_URL=postgresql://... IMAGE`
# (DSR_ENV=production needs DSR_ENCRYPTION_KEY and DSR_STAFF_JWT_SECRET or DSR_STAFF_JWKS_URL).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home /srv dsr && mkdir -p /srv/var && chown dsr /srv/var
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER dsr
WORKDIR /srv
ENV DSR_DATA_DIR=/srv/var \
    DSR_DATABASE_URL=sqlite:////srv/var/dsr.db \
    PYTHONUNBUFFERED=1
EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["dsr", "serve", "--host", "0.0.0.0", "--port", "8000"]
