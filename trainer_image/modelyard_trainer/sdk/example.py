"""An example of your own training script on the SDK (spec.script), shipped in the trainer image.

    torchrun --standalone --nproc-per-node=2 -m modelyard_trainer.sdk.example --output ./out

It brings everything the built-in trainer would: its own data (points of a few classes around
seeded random centres, generated alike on every rank), its own loader (a DistributedSampler
gives each rank its shard), its own two-layer network, loss and loop under DDP. The SDK gives
it the rank and world, checkpoints to resume from after a restart, progress reports and
`publish`. In a cluster the operator sets the output (MODELYARD_OUTPUT_DIR) and the gang.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from modelyard_trainer import sdk

log = logging.getLogger("modelyard_trainer.sdk.example")


def make_data(samples: int, features: int, classes: int, seed: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, features, generator=generator) * 1.5
    labels = torch.randint(classes, (samples,), generator=generator)
    points = centres[labels] + torch.randn(samples, features, generator=generator)
    return points, labels


class Classifier(nn.Module):
    """What is served: class probabilities and the class index, like the built-in trainer's."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probabilities = torch.softmax(self.network(features), dim=1)
        return probabilities, probabilities.argmax(dim=1)


def evaluate(network: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    network.eval()
    with torch.no_grad():
        logits = network(features)
    return {
        "test_loss": float(nn.functional.cross_entropy(logits, labels)),
        "test_accuracy": float((logits.argmax(dim=1) == labels).float().mean()),
    }


def train(run: sdk.Run, args: argparse.Namespace) -> None:
    torch.manual_seed(args.seed)
    points, labels = make_data(args.samples, args.features, args.classes, args.seed)
    split = len(points) * 4 // 5
    train_set = TensorDataset(points[:split], labels[:split])
    test_points, test_labels = points[split:], labels[split:]
    sampler: DistributedSampler[tuple[torch.Tensor, ...]] = DistributedSampler(
        train_set, num_replicas=run.world_size, rank=run.rank, shuffle=True, seed=args.seed
    )
    # The global batch is args.batch_size, whatever the number of processes.
    loader = DataLoader(
        train_set, batch_size=max(1, args.batch_size // run.world_size), sampler=sampler
    )
    network = nn.Sequential(
        nn.Linear(args.features, args.hidden), nn.ReLU(), nn.Linear(args.hidden, args.classes)
    )
    optimizer = torch.optim.Adam(network.parameters(), lr=args.learning_rate)
    start = 0
    state = run.checkpoints.load_latest()
    if state is not None:
        network.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"]
    model: nn.Module = DistributedDataParallel(network) if run.world_size > 1 else network
    loss_function = nn.CrossEntropyLoss()
    for epoch in range(start, args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        total = 0.0
        for step, (features, target) in enumerate(loader, start=1):
            optimizer.zero_grad()
            loss = loss_function(model(features), target)
            loss.backward()
            optimizer.step()
            total += loss.item()
            run.report(
                epoch=epoch,
                epochs=args.epochs,
                step=step,
                steps_per_epoch=len(loader),
                loss=total / step,
            )
        validation = evaluate(network, test_points, test_labels)
        run.report(
            epoch=epoch + 1,
            epochs=args.epochs,
            loss=total / len(loader),
            metrics={"val_accuracy": validation["test_accuracy"]},
        )
        if (epoch + 1) % args.checkpoint_every == 0 or epoch + 1 == args.epochs:
            run.checkpoints.save(
                {
                    "epoch": epoch + 1,
                    "model": network.state_dict(),
                    "optimizer": optimizer.state_dict(),
                }
            )
    metrics = evaluate(network, test_points, test_labels)
    log.info("test accuracy %.4f", metrics["test_accuracy"])
    run.publish(
        Classifier(network),
        test_points[:64],
        metrics,
        output_names=["probabilities", "class_index"],
        class_labels=[str(index) for index in range(args.classes)],
        quantize_int8=args.int8,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="output directory (default: $MODELYARD_OUTPUT_DIR)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--checkpoint-every", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress-interval-seconds", type=float, default=5.0)
    parser.add_argument("--int8", action="store_true", help="also publish an int8 variant")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    sdk.main(
        lambda run: train(run, arguments),
        output=arguments.output,
        name="example",
        progress_interval_seconds=arguments.progress_interval_seconds,
    )
