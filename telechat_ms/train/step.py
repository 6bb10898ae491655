"""The compiled training step: forward/backward with a loss scale, gradient accumulation, data-parallel gradient
all-reduce, overflow check, global-norm clipping and AdamW — as MindSpore Cells (graph mode).

Why not nn.TrainOneStepWithLossScaleCell: it has no gradient accumulation, its overflow check needs
NPUGetFloatStatusV2 (no CPU kernel, mindspore_cpu.md) and it keeps the loss scale inside the graph. Here the
check is `isfinite` over the (all-reduced) gradients, which runs on every device, and the loss scale is host
state passed in per step, so it is checkpointed with the step counter (train/amp.py LossScaler).

Graphs: `TrainStep` (accumulation 1: one graph per step) or `AccumStep` per micro batch + `ApplyStep`.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ParameterTuple, Tensor, nn, ops


class ForwardBackward(nn.Cell):
    """(input_ids, labels, position_ids, document_ids, scale) -> (loss, grads of scale * loss w.r.t. params).

    `documents`: the model takes position_ids/document_ids (packed rows: positions restart and attention stays
    inside each document, docs/data.md); otherwise only input_ids and labels are passed.
    """

    def __init__(self, network, params, documents: bool):
        super().__init__(auto_prefix=False)
        self.network = network
        self.weights = ParameterTuple(params)
        self.documents = documents
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)

    def construct(self, input_ids, labels, position_ids, document_ids, scale):
        # network(input_ids, labels, attention_mask, loss_mask, position_ids, document_ids)
        args = (input_ids, labels, None, None, position_ids, document_ids) if self.documents else (input_ids, labels)
        loss = self.network(*args)
        grads = self.grad(self.network, self.weights)(*args, ops.cast(scale, loss.dtype))
        return loss, grads


class Updater(nn.Cell):
    """grads -> all-reduce (data parallel) -> unscale -> finite? -> clip to max_norm -> AdamW (skipped if not finite).

    Returns (finite, global norm of the unscaled gradients before clipping).
    """

    def __init__(self, optimizer, max_grad_norm: float | None, data_parallel: int = 1):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.max_grad_norm = max_grad_norm
        self.reducer = nn.DistributedGradReducer(optimizer.params, mean=True, degree=data_parallel) \
            if data_parallel > 1 else None
        self.hyper_map = ops.HyperMap()

    def construct(self, grads, inv_scale, lr):
        if self.reducer is not None:
            grads = self.reducer(grads)
        grads = self.hyper_map(ops.partial(ops.mul, inv_scale), grads)
        # g * 0 is 0 for every finite element and NaN for an Inf or NaN, and a sum of zeros cannot overflow: the
        # same answer as isfinite(g).all(), with a 2-D-fast reduction instead of a full-tensor ReduceAll
        finite = ops.isfinite(ops.stack([_sum_all(g * 0.0) for g in grads]).sum())
        # zeroed when not finite, so the norm and the (discarded) update stay finite
        grads = self.hyper_map(ops.partial(_zero_unless, finite), grads)
        norm = ops.sqrt(ops.stack([_sum_all(g * g) for g in grads]).sum())      # g * g: Square's value, 3x faster on CPU
        if self.max_grad_norm is not None:
            coef = ops.minimum(self.max_grad_norm / (norm + 1e-6), 1.0)
            grads = self.hyper_map(ops.partial(ops.mul, coef), grads)
        return ops.depend(finite, self.optimizer(grads, lr, finite)), norm


def _sum_all(x):
    """The sum of all elements, over the rows of a 2-D view: MindSpore's CPU reduce kernels are fast on the last
    axis of a 2-D tensor only (a full-tensor sum of a parameter's gradient took 2.2 ms on average on the bench
    model, docs/performance.md)."""
    rows = x.reshape(-1, x.shape[-1]) if x.ndim > 1 else x.reshape(1, -1)           # (R, C)
    return rows.sum(-1).sum()


def _zero_unless(finite, grad):
    # full-shape condition: same values, no per-element broadcast index tables on CPU
    return ops.select(ops.broadcast_to(finite, grad.shape), grad, ops.zeros_like(grad))


class _LossMean(nn.Cell):
    """The global mean of the per-rank losses (for logging; gradients use the local loss)."""

    def __init__(self, data_parallel: int):
        super().__init__()
        self.data_parallel = data_parallel
        self.all_reduce = ops.AllReduce() if data_parallel > 1 else None

    def construct(self, loss):
        if self.all_reduce is None:
            return loss
        return self.all_reduce(loss) / self.data_parallel


class TrainStep(nn.Cell):
    """Gradient accumulation 1: (input_ids, labels, position_ids, document_ids, scale, lr) -> (mean loss, finite,
    grad norm)."""

    def __init__(self, forward_backward, updater, data_parallel: int = 1):
        super().__init__(auto_prefix=False)
        self.forward_backward = forward_backward
        self.updater = updater
        self.loss_mean = _LossMean(data_parallel)

    def construct(self, input_ids, labels, position_ids, document_ids, scale, lr):
        loss, grads = self.forward_backward(input_ids, labels, position_ids, document_ids, scale)
        finite, norm = self.updater(grads, 1.0 / scale, lr)
        return self.loss_mean(loss), finite, norm


class AccumStep(nn.Cell):
    """One micro batch: adds its scaled gradients to the fp32 accumulation buffers; returns the mean loss."""

    def __init__(self, forward_backward, buffers, data_parallel: int = 1):
        super().__init__(auto_prefix=False)
        self.forward_backward = forward_backward
        self.buffers = buffers
        self.loss_mean = _LossMean(data_parallel)
        self.hyper_map = ops.HyperMap()

    def construct(self, input_ids, labels, position_ids, document_ids, scale):
        loss, grads = self.forward_backward(input_ids, labels, position_ids, document_ids, scale)
        done = self.hyper_map(ops.assign_add, self.buffers, grads)
        return ops.depend(self.loss_mean(loss), done)


class ApplyStep(nn.Cell):
    """After `accumulation` micro batches: update from the buffers (mean over micro batches), then zero them."""

    def __init__(self, updater, buffers):
        super().__init__(auto_prefix=False)
        self.updater = updater
        self.buffers = buffers
        self.hyper_map = ops.HyperMap()

    def construct(self, inv_scale, lr):
        finite, norm = self.updater(self.buffers, inv_scale, lr)
        cleared = self.hyper_map(_clear, ops.depend(self.buffers, finite))
        return ops.depend(finite, cleared), norm


def _clear(buffer):
    return ops.assign(buffer, ops.zeros_like(buffer))


def build_steps(network, optimizer, max_grad_norm, accumulation: int, data_parallel: int = 1,
                documents: bool = False):
    """Returns run(batches, scale, lr) -> (loss, finite, grad_norm); `batches`: `accumulation` tuples of
    (input_ids, labels, position_ids, document_ids) tensors."""
    params = list(optimizer.params)
    forward_backward = ForwardBackward(network, params, documents)
    updater = Updater(optimizer, max_grad_norm, data_parallel)
    if accumulation == 1:
        step = TrainStep(forward_backward, updater, data_parallel)
        step.set_train()

        def run(batches, scale, lr):
            (batch,) = batches
            loss, finite, norm = step(*batch, Tensor(scale, ms.float32), Tensor(lr, ms.float32))
            return float(loss.asnumpy()), bool(finite.asnumpy()), float(norm.asnumpy())
        return run
    buffers = ParameterTuple(params).clone(prefix="accum_grad", init="zeros")
    accum, apply = AccumStep(forward_backward, buffers, data_parallel), ApplyStep(updater, buffers)
    accum.set_train()
    apply.set_train()

    def run(batches, scale, lr):
        scale_t = Tensor(scale, ms.float32)
        losses = [accum(*batch, scale_t) for batch in batches]
        # the loss is a mean per micro batch, so the update uses the mean over micro batches
        finite, norm = apply(Tensor(1.0 / (scale * accumulation), ms.float32), Tensor(lr, ms.float32))
        loss = sum(float(x.asnumpy()) for x in losses) / accumulation
        return loss, bool(finite.asnumpy()), float(norm.asnumpy())
    return run
