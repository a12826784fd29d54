"""Train and export the sample models shipped in this folder.

Both models are trained on scikit-learn's bundled handwritten digits (8x8 images,
10 classes, 1,797 samples) and evaluated on a held-out quarter of it.

* ``digits_cnn.onnx``: y = softmax(ReLU(Conv2D(x))) stacked twice, then a dense head:
  Conv(1->16) ReLU Conv(16->32) ReLU MaxPool Flatten Gemm(512->64) ReLU Gemm(64->10) Softmax.
* ``digits_mlp.onnx``: Gemm(64->128) ReLU Gemm(128->64) ReLU Gemm(64->10) Softmax.
* ``digits_cnn.npz`` / ``digits_mlp.npz``: the held-out inputs, keyed by the model's
  input name, and ``labels``.

The graphs are written with ``onnx.helper`` from the trained weights, so the files
depend only on the weights. Training is seeded and single-threaded, so a rerun on the
same machine gives the same files.

Dev-time only: needs ``torch==2.13.0`` (CPU) and ``scikit-learn``
(``make samples`` installs both into the repo's virtual environment).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent
OPSET = 17
IR_VERSION = 8
EPOCHS = 60


def load_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)  # pixel values are 0..16
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)


class DigitsCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = torch.nn.Linear(32 * 4 * 4, 64)
        self.fc2 = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.nn.functional.max_pool2d(x, 2)
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc2(x)


class DigitsMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 128)
        self.fc2 = torch.nn.Linear(128, 64)
        self.fc3 = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(x))
        x = torch.relu(self.fc2(x))
        return self.fc3(x)


def train(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> None:
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), 64):
            idx = order[start : start + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            opt.step()
    model.eval()


def accuracy(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    return float((pred == y).mean())


def init(name: str, t: torch.Tensor) -> TensorProto:
    return numpy_helper.from_array(t.detach().numpy().astype(np.float32), name)


def gemm(prefix: str, layer: torch.nn.Linear, x: str, out: str) -> tuple[list, list]:
    w, b = f"{prefix}.weight", f"{prefix}.bias"
    node = helper.make_node("Gemm", [x, w, b], [out], name=f"/{prefix}/Gemm", transB=1)
    return [node], [init(w, layer.weight), init(b, layer.bias)]


def conv(prefix: str, layer: torch.nn.Conv2d, x: str, out: str) -> tuple[list, list]:
    w, b = f"{prefix}.weight", f"{prefix}.bias"
    node = helper.make_node(
        "Conv", [x, w, b], [out], name=f"/{prefix}/Conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]
    )
    return [node], [init(w, layer.weight), init(b, layer.bias)]


def relu(name: str, x: str, out: str) -> list:
    return [helper.make_node("Relu", [x], [out], name=name)]


def finish(name: str, nodes: list, inits: list, input_shape: list) -> onnx.ModelProto:
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], name="/Softmax", axis=1))
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", *input_shape])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 10])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="prunequant-samples",
        ir_version=IR_VERSION,
    )
    onnx.checker.check_model(model, full_check=True)
    return model


def export_cnn(m: DigitsCNN) -> onnx.ModelProto:
    nodes, inits = [], []
    for part in (
        conv("conv1", m.conv1, "input", "c1"),
        (relu("/relu1", "c1", "r1"), []),
        conv("conv2", m.conv2, "r1", "c2"),
        (relu("/relu2", "c2", "r2"), []),
        (
            [
                helper.make_node(
                    "MaxPool", ["r2"], ["p2"], name="/pool", kernel_shape=[2, 2], strides=[2, 2]
                ),
                helper.make_node("Flatten", ["p2"], ["f2"], name="/flatten", axis=1),
            ],
            [],
        ),
        gemm("fc1", m.fc1, "f2", "h1"),
        (relu("/relu3", "h1", "r3"), []),
        gemm("fc2", m.fc2, "r3", "logits"),
    ):
        nodes += part[0]
        inits += part[1]
    return finish("digits_cnn", nodes, inits, [1, 8, 8])


def export_mlp(m: DigitsMLP) -> onnx.ModelProto:
    nodes, inits = [], []
    for part in (
        gemm("fc1", m.fc1, "input", "h1"),
        (relu("/relu1", "h1", "r1"), []),
        gemm("fc2", m.fc2, "r1", "h2"),
        (relu("/relu2", "h2", "r2"), []),
        gemm("fc3", m.fc3, "r2", "logits"),
    ):
        nodes += part[0]
        inits += part[1]
    return finish("digits_mlp", nodes, inits, [64])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="output folder")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x_train, x_test, y_train, y_test = load_split()

    for name, model, export, shape in (
        ("digits_cnn", DigitsCNN(), export_cnn, (-1, 1, 8, 8)),
        ("digits_mlp", DigitsMLP(), export_mlp, (-1, 64)),
    ):
        xtr, xte = x_train.reshape(shape), x_test.reshape(shape)
        train(model, xtr, y_train)
        acc = accuracy(model, xte, y_test)
        proto = export(model)
        args.out.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, args.out / f"{name}.onnx")
        np.savez_compressed(args.out / f"{name}.npz", input=xte, labels=y_test)
        print(f"{name}: held-out accuracy {acc:.4f} on {len(y_test)} samples")


if __name__ == "__main__":
    main()
