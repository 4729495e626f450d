"""`ae-train export`: the encoder and decoder of a checkpoint, loadable without ae_train.

    ae-train export --ckpt CKPT --out DIR

Writes `encoder.pt2` and `decoder.pt2` (torch.export programs with a dynamic batch dimension; where
torch.export cannot trace a model, TorchScript `encoder.ts` / `decoder.ts` instead) and
`export.json` (input shape and dtype, latent width, how to load, and for images the preprocessing the
model was trained with). The encoder takes a batch as training fed it: uint8 images (B, C, H, W),
scaled to [0, 1] inside, or float32 arrays (B, *shape). Images trained with data.image_size must be
prepared the same way first (export.json `preprocess`: shorter side resized with antialiasing to
cover H x W, centre crop, converted to the mode); `ae_train.data.preprocess.image_into` does exactly that.
In plain PyTorch:

    enc = torch.export.load("DIR/encoder.pt2").module()
    z = enc(x)                      # (B, latent_dim)
    x_hat = torch.export.load("DIR/decoder.pt2").module()(z)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .errors import ConfigError
from .exitcodes import ExitCode


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ae-train export", description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", required=True)
    p.add_argument("--out", required=True, help="directory for encoder/decoder files (must not hold them yet)")
    try:
        return p.parse_args(argv)
    except SystemExit as e:
        if e.code:
            raise ConfigError("usage: ae-train export --ckpt CKPT --out DIR") from None
        raise


def _modules(model):
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = model.encoder

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.dtype == torch.uint8:  # images as stored: pixels to [0, 1]
                x = x.float() / 255.0
            return self.net(x)

    return Encoder().eval(), model.decoder.eval()


def save_program(module, example, path_pt2: Path, path_ts: Path) -> Path:
    """torch.export with a dynamic batch dimension; TorchScript where export cannot trace."""
    import torch

    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path_pt2))
        return path_pt2
    except Exception:  # models torch.export cannot trace yet: the older, still loadable format
        torch.jit.save(torch.jit.trace(module, example), str(path_ts))
        return path_ts


def main(argv: list[str]) -> int:
    a = _parse(argv)
    import torch

    from .inference import load_model, spec_of_model

    out = Path(a.out)
    names = ("encoder.pt2", "decoder.pt2", "encoder.ts", "decoder.ts", "export.json")
    taken = [n for n in names if (out / n).exists()]
    if taken:
        raise ConfigError(f"--out: {out / taken[0]} exists; export never replaces a file")
    model = load_model(a.ckpt)
    spec = spec_of_model(model)
    out.mkdir(parents=True, exist_ok=True)
    encoder, decoder = _modules(model)
    x = torch.zeros((2, *spec.shape), dtype=torch.uint8 if spec.dtype == "uint8" else torch.float32)
    with torch.no_grad():
        z = encoder(x)
    enc_path = save_program(encoder, x, out / "encoder.pt2", out / "encoder.ts")
    dec_path = save_program(decoder, z, out / "decoder.pt2", out / "decoder.ts")
    meta = {"ckpt": str(a.ckpt), "input_shape": list(spec.shape), "input_dtype": spec.dtype,
            "sample_key": model.hparams.get("sample_key", "x.npy"), "latent_dim": int(z.shape[1]),
            "encoder": enc_path.name, "decoder": dec_path.name,
            "load": "torch.export.load(path).module()" if enc_path.suffix == ".pt2" else "torch.jit.load(path)"}
    if spec.resize:
        h, w = spec.resize
        meta["preprocess"] = {
            "image_size": [h, w], "image_mode": spec.mode,
            "steps": f"decode; convert to {spec.mode}; resize the shorter side (bicubic, antialiased) so the image "
                     f"covers {h}x{w}; crop the centre {h}x{w}; uint8 (C, H, W) = ({spec.shape[0]}, {h}, {w})",
            "python": "ae_train.data.preprocess.image_into(jpeg_or_png_bytes, out=np.empty(input_shape, np.uint8), "
                      f"mode={spec.mode!r})"}
    (out / "export.json").write_text(json.dumps(meta, indent=1))
    print(f"wrote {enc_path} and {dec_path} (input {'x'.join(map(str, spec.shape))} {spec.dtype}, "
          f"latent {meta['latent_dim']}); load with {meta['load']}")
    return ExitCode.OK
