# One image for every role: `docker run IMAGE signaling|sfu|billing|migrate`.
# The chain is a separate service (see docker-compose.yml): no Node here.

# ---- build: the dependencies (a cached layer), then the project itself ----
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Dependencies first, from pyproject.toml alone: editing the code does not
# re-download them. (All of them ship manylinux wheels: no compiler needed.)
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

# Then the project, non-editable: the wheel carries sql/ and chain/ inside the
# package (.gitignore: hatchling leaves out what git ignores, e.g. node_modules/).
COPY README.md .gitignore ./
COPY sql ./sql
COPY chain ./chain
COPY vilokanam ./vilokanam
COPY signaling ./signaling
COPY sfu ./sfu
COPY billing ./billing
RUN pip install --no-deps . \
    && vilokanam --help > /dev/null

# ---- runtime: the venv only, run by an unprivileged user ----
FROM python:3.11-slim

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN useradd --create-home --uid 10001 --user-group vilokanam
COPY --from=build /opt/venv /opt/venv

USER vilokanam
WORKDIR /home/vilokanam

# signaling (8080); an SFU worker's control port (8090) and billing's health
# port (8070) are private.
EXPOSE 8080

ENTRYPOINT ["vilokanam"]
CMD ["--help"]
