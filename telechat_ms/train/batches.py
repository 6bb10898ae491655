"""Which MindRecord rows each optimizer step reads, as a pure function of (seed, step): resume needs only the step.

Epoch e uses the permutation `default_rng(seed + e)` of all rows (or file order without shuffle); step s of the
run takes the next `global_batch` rows of that order (the incomplete tail of an epoch is dropped). Inside a step
the rows are laid out (accumulation, data_parallel, micro_batch): rank r's micro batch a is rows[a, r]. So a
single process with the same global batch reads exactly the same rows per optimizer step as N data-parallel
ranks, and the rows of a step do not depend on how the run was interrupted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..config.base import ConfigError

COLUMNS = ("input_ids", "labels", "position_ids", "document_ids")   # the preprocess column contract


@dataclass(frozen=True)
class BatchSchedule:
    num_rows: int
    micro_batch: int
    accumulation: int = 1
    data_parallel: int = 1
    rank: int = 0
    seed: int = 0
    shuffle: bool = True

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accumulation * self.data_parallel

    @property
    def steps_per_epoch(self) -> int:
        return self.num_rows // self.global_batch

    def check(self, source: str) -> None:
        if self.steps_per_epoch == 0:
            raise ConfigError(f"{source}: {self.num_rows} rows is less than one global batch of {self.global_batch} "
                              f"(batch_size {self.micro_batch} x gradient_accumulation_steps {self.accumulation} "
                              f"x data_parallel {self.data_parallel})")

    def epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_rows, dtype=np.int64)
        return np.random.default_rng(self.seed + epoch).permutation(self.num_rows)

    def rank_rows(self, step: int, order: np.ndarray | None = None) -> np.ndarray:
        """Row indices of this rank for `step`, shape (accumulation, micro_batch)."""
        epoch, pos = divmod(step, self.steps_per_epoch)
        order = self.epoch_order(epoch) if order is None else order
        rows = order[pos * self.global_batch:(pos + 1) * self.global_batch]
        return rows.reshape(self.accumulation, self.data_parallel, self.micro_batch)[:, self.rank]


def check_columns(files: list[str], columns=COLUMNS) -> None:
    """Every file holds every column the run feeds the model (train_dataset.input_columns): one error naming the
    file and the missing columns, before MindSpore's reader fails deep inside."""
    from mindspore.mindrecord import FileReader   # pylint: disable=import-outside-toplevel
    for file in files:
        try:
            reader = FileReader(file)
        except Exception as exc:   # pylint: disable=broad-except  (MindSpore raises RuntimeError / MRMOpenError)
            first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
            raise ConfigError(f"{file}: not a MindRecord written by `telechat-ms preprocess` "
                              f"({first.strip()})") from None
        try:
            have = reader.schema()
        finally:
            reader.close()
        missing = [c for c in columns if c not in have]
        if missing:
            raise ConfigError(f"{file}: no column {', '.join(missing)} (train_dataset.input_columns names "
                              f"{', '.join(columns)}; this file has {', '.join(sorted(have))}): write the dataset "
                              "with `telechat-ms preprocess`")


def iterate_batches(files: list[str], schedule: BatchSchedule, start_step: int, end_step: int,
                    num_parallel_workers: int = 1):
    """Yields (step, [(input_ids, labels, position_ids, document_ids)] * accumulation), numpy int32
    (micro_batch, row_length) each, for this rank.

    One MindDataset per epoch segment, reading exactly this rank's rows in order through a SubsetSampler.
    """
    import mindspore.dataset as ds   # pylint: disable=import-outside-toplevel
    step = start_step
    while step < end_step:
        epoch = step // schedule.steps_per_epoch
        last = min(end_step, (epoch + 1) * schedule.steps_per_epoch)
        order = schedule.epoch_order(epoch)
        indices = np.concatenate([schedule.rank_rows(s, order).reshape(-1) for s in range(step, last)])
        dataset = ds.MindDataset(files, columns_list=list(COLUMNS), sampler=ds.SubsetSampler(indices.tolist()),
                                 num_parallel_workers=num_parallel_workers)
        dataset = dataset.batch(schedule.micro_batch, drop_remainder=True)
        micro = dataset.create_tuple_iterator(output_numpy=True, num_epochs=1)
        for current in range(step, last):
            yield current, [tuple(next(micro)) for _ in range(schedule.accumulation)]
        step = last
