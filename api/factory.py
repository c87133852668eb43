"""The one assembly point: settings -> workspace -> retriever -> generator -> QA pipeline.

The CLI (``ctx.obj``), the server (:func:`api.service.build_service`) and the benchmarks
(``bench/common.py``) all build their components through :class:`RagStack`, so the way the
parts fit together is written once. Every part is built on first use (the CLI's quick commands
never load a model); :meth:`RagStack.warm_up` loads the models now, as the server does at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

from api.settings import Settings

if TYPE_CHECKING:  # the real imports are inside the builders: importing this module loads no model code
    from collections.abc import Callable

    from api.settings import ServingConfig
    from finetune.adapters import AdapterRegistry
    from finetune.runner import Workspace as FinetuneWorkspace
    from ingest.workspace import Workspace
    from rag.adapter_defaults import AdapterDefaults, AdapterResolver
    from rag.generator import Generator
    from rag.qa import QAPipeline
    from rag.retriever import Retriever
    from rag.scheduler import Scheduler


def build_scheduler(
    generator: Generator, serving: ServingConfig, k: int, on_step: Callable[[int, float], None] | None = None
) -> Scheduler:
    """The continuous-batching scheduler the server runs, over ``generator`` (loaded here) with the ``serving``
    settings for answers of ``k`` documents; ``on_step(rows, seconds)`` after each batched forward (benchmarks)."""
    from rag.scheduler import Scheduler

    gen = generator.warm_up()
    return Scheduler(
        gen.session,
        max_batch_rows=serving.max_batch_rows,
        max_queue=serving.max_queue,
        pad_token_id=gen.tokenizer.pad_token_id,
        max_prefills_per_step=serving.max_prefills_per_step,
        max_prefill_tokens=serving.max_prefill_tokens,
        max_active_requests=serving.active_answers(k),
        admission=serving.admission == "predict",
        admission_margin=serving.admission_margin,
        on_step=on_step,
    )


@dataclass
class RagStack:
    """The components of one ragqa installation, built from its :class:`~api.settings.Settings`."""

    settings: Settings

    @classmethod
    def from_env(cls) -> RagStack:
        """Settings read from the environment and config file (see :mod:`api.settings`)."""
        return cls(Settings())

    @cached_property
    def workspace(self) -> Workspace:
        """Collections and the embedder (loaded on first use of ``workspace.embedder``)."""
        from ingest.workspace import Workspace

        return Workspace(self.settings.home, self.settings.ingest)

    @cached_property
    def retriever(self) -> Retriever:
        """The hybrid retriever over the workspace's embedder (loads the embedder); with ``retriever.backend: ray``
        its dense search runs over ``retriever.shards`` FAISS shards held by Ray actors."""
        config = self.settings.retriever
        if config.backend == "ray":
            from rag.sharded_retriever import ShardedRetriever

            return ShardedRetriever(self.workspace.embedder, config)
        from rag.retriever import Retriever

        return Retriever(self.workspace.embedder, config)

    @cached_property
    def generator(self) -> Generator:
        """The generator with the workspace's adapters; its model loads on first use or :meth:`warm_up`."""
        from rag.generator import Generator

        s = self.settings
        return Generator(s.generator, s.models_dir, s.adapters_dir)

    @cached_property
    def qa(self) -> QAPipeline:
        """The QA pipeline: retriever + generator + the QA settings."""
        from rag.qa import QAPipeline

        return QAPipeline(self.retriever, self.generator, self.settings.qa, adapter_resolver=self.adapter_resolver)

    @cached_property
    def scheduler(self) -> Scheduler:
        """The continuous-batching scheduler that owns the generator's model (the server's; ``close()`` it)."""
        return build_scheduler(self.generator, self.settings.serving, self.settings.retriever.k)

    @cached_property
    def serving_qa(self) -> QAPipeline:
        """The server's QA pipeline: answers go through :attr:`scheduler` when ``serving.batching`` is on
        (concurrent answers share decode steps), else each holds the model alone like :attr:`qa`."""
        from rag.qa import QAPipeline

        scheduler = self.scheduler if self.settings.serving.batching else None
        resolver = self.adapter_resolver
        return QAPipeline(
            self.retriever, self.generator, self.settings.qa, scheduler=scheduler, adapter_resolver=resolver
        )

    @cached_property
    def adapter_resolver(self) -> AdapterResolver:
        """Which adapter answers when a request names none: collection default, server default, shipped, none."""
        from rag.adapter_defaults import AdapterResolver
        from rag.models import canonical_name

        s = self.settings
        return AdapterResolver(s.home, s.adapters_dir, canonical_name(s.generator.model))

    def adapter_defaults(self) -> AdapterDefaults:
        """The default-adapter pointers of the workspace (``ragqa adapters promote|rollback``)."""
        from rag.adapter_defaults import AdapterDefaults

        return AdapterDefaults(self.settings.home)

    def warm_up(self) -> RagStack:
        """Load the embedder and the generator now rather than on the first question."""
        _ = self.workspace.embedder
        self.generator.warm_up()
        return self

    def adapters(self) -> AdapterRegistry:
        """The trained LoRA adapters of the workspace."""
        from finetune.adapters import AdapterRegistry

        return AdapterRegistry(self.settings.adapters_dir)

    def finetune_workspace(self) -> FinetuneWorkspace:
        """Where fine-tune runs read the base model and write checkpoints and adapters."""
        from finetune.runner import Workspace as FinetuneWorkspace

        s = self.settings
        return FinetuneWorkspace(s.home, s.generator, s.ingest, s.retriever, s.qa)
