# ddkit on PyTorch's official CUDA runtime image (torch 2.8, CUDA 12.8, cuDNN 9, Python 3.11+).
#   docker build -t ddkit .
#   docker run --gpus all --rm -v DATA:/data -v OUT:/out ddkit make-submission cifar100 --data-root /data --out /out
FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime AS wheel

ENV PIP_DISABLE_PIP_VERSION_CHECK=1
COPY . /src
# The wheel carries the recipes of submissions/ inside the package (challenge_kit/recipes_data).
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels /src

FROM pytorch/pytorch:2.8.0-cuda12.8-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# A C++ compiler: torch.compile (the fast scorer's) builds its CPU kernels and Triton's launcher with it; the
# runtime image has none, and without one the fast scorer runs uncompiled (recorded as compiled: false).
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*

COPY --from=wheel /wheels /tmp/wheels
# The constraint keeps the image's CUDA build of torch/torchvision instead of letting pip replace it.
RUN python -c "from importlib.metadata import version as v; [print(f'{p}=={v(p)}') for p in ('torch', 'torchvision')]" \
        > /tmp/keep-torch.txt \
    && pip install --no-cache-dir -c /tmp/keep-torch.txt /tmp/wheels/ddkit-*.whl \
    && rm -r /tmp/keep-torch.txt /tmp/wheels \
    && cd / && ddkit methods > /dev/null

WORKDIR /work
ENTRYPOINT ["ddkit"]
CMD ["--help"]
