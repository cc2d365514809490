# The mtbbs-monitor image: every component's command is installed; the
# compose file chooses which one a container runs.
FROM python:3.12-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY requirements ./requirements
COPY wire ./wire
COPY agent ./agent
COPY collector ./collector
COPY alerter ./alerter
COPY stack ./stack
COPY demobbs ./demobbs
# The locked versions, hashes checked, then the project without resolving again.
RUN pip install --require-hashes --no-deps -r requirements/run.txt \
    && pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /var/lib/mtbbs --shell /usr/sbin/nologin mtbbs \
    && mkdir -p /var/lib/mtbbs/bbs /var/lib/mtbbs/agent \
    && chown -R mtbbs:mtbbs /var/lib/mtbbs

USER mtbbs
WORKDIR /var/lib/mtbbs
CMD ["mtbbs-collector", "status", "-v"]
