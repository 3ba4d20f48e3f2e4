# convserve server image.
#
#   docker build -t convserve:latest .      (podman: add --format docker to keep the HEALTHCHECK)
#   docker run --rm -p 50051:50051 convserve:latest
#
# Settings are CONVSERVE_* environment variables (see `convserve serve --help`); the server
# handles SIGTERM itself (in-flight calls get CONVSERVE_GRACE_SECONDS, then exit 0).
#
# LICENCE: the server package installs pyFFTW, whose wheels bundle the FFTW3 libraries
# (pyfftw.libs/libfftw3*.so). FFTW is GPL-2.0-or-later, so this image, which redistributes
# those binaries, carries FFTW's licence terms: pyFFTW's own licence file(s) found in the
# installed distribution (its dist-info; they say pyFFTW is BSD-3-Clause and FFTW3 is GPL) and
# the GPL version 2 text are copied to /usr/share/licenses/convserve/ below. FFTW's sources are
# at https://www.fftw.org/ (version: see the libfftw3 file names in pyfftw.libs).

# ---- build stage: install the project into a virtual environment ----------------------------
FROM python:3.11-slim AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Only what the package build needs (see .dockerignore as well).
COPY proto/ proto/
COPY client/ client/
COPY server/ server/
RUN pip install --no-cache-dir ./client ./server \
    && python -m compileall -q /opt/venv/lib

# Collect the licence files pyFFTW and ducc0 ship (found through their installed metadata, not a
# fixed path, so a new version with a different layout still works), plus the GPL text.
RUN mkdir -p /licenses && python -c '\
import importlib.metadata as md, pathlib, shutil; \
dist = md.distribution("pyfftw"); out = pathlib.Path("/licenses"); \
found = [f for f in dist.files or [] if any(k in f.name.lower() for k in ("licen", "copying", "notice"))]; \
assert found, "no licence file in the pyfftw distribution"; \
[shutil.copy(dist.locate_file(f), out / ("pyfftw-" + f.name)) for f in found]; \
libs = sorted(p.name for p in pathlib.Path(dist.locate_file("pyfftw.libs")).glob("libfftw3*")); \
(out / "NOTICE").write_text( \
  "This image contains FFTW 3 (https://www.fftw.org/), Copyright (c) 2003, 2007-14 Matteo Frigo\n" \
  "and Massachusetts Institute of Technology, bundled in the pyFFTW " + dist.version + " wheel as:\n  " \
  + "\n  ".join(libs) + "\n" \
  "FFTW is free software under the GNU General Public License, version 2 or (at your option)\n" \
  "any later version: see GPL-2 in this folder. pyFFTW itself is BSD-3-Clause: see pyfftw-*.\n"); \
ducc = md.distribution("ducc0"); \
licences = [f for f in ducc.files or [] if any(k in f.name.lower() for k in ("licen", "copying"))]; \
assert licences, "no licence file in the ducc0 distribution"; \
[shutil.copy(ducc.locate_file(f), out / ("ducc0-" + f.name)) for f in licences]; \
(out / "NOTICE").write_text((out / "NOTICE").read_text() + "This image contains ducc0 " + ducc.version + \
  " (https://gitlab.mpcdf.mpg.de/mtr/ducc), free software under the GNU General Public License,\n" \
  "version 2 or (at your option) any later version: see ducc0-* and GPL-2 in this folder.\n")' \
    && cp /usr/share/common-licenses/GPL-2 /licenses/GPL-2

# ---- runtime stage ---------------------------------------------------------------------------
FROM python:3.11-slim

COPY --from=build /opt/venv /opt/venv
COPY --from=build /licenses /usr/share/licenses/convserve
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin convserve
USER convserve
WORKDIR /tmp

ENV CONVSERVE_HOST=0.0.0.0 CONVSERVE_PORT=50051
EXPOSE 50051

# Shell form so that the check follows CONVSERVE_PORT when it is changed at run time.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD convserve health --target 127.0.0.1:${CONVSERVE_PORT:-50051} --timeout 3 || exit 1

STOPSIGNAL SIGTERM
CMD ["convserve", "serve"]
