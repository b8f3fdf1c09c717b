"""Knowledge distillation: losses (logits, hidden states, attention), the trainer, data
(a corpus or teacher-generated text) and students built from the teacher."""

from tcompress.distill.attention import AttentionKD, ValueRelationKD
from tcompress.distill.base import DistillLoss, Outputs, layer_map
from tcompress.distill.data import CompletionsAPI, blocks_of_texts, generate_texts, text_blocks
from tcompress.distill.hidden import HiddenKD
from tcompress.distill.logits import LanguageModelLoss, LogitKD, kl_loss
from tcompress.distill.losses import LOSSES, parse_losses
from tcompress.distill.students import student_from
from tcompress.distill.trainer import History, TrainConfig, distill

__all__ = ["AttentionKD", "ValueRelationKD", "DistillLoss", "Outputs", "layer_map", "CompletionsAPI",
           "blocks_of_texts", "generate_texts", "text_blocks", "HiddenKD", "LanguageModelLoss", "LogitKD", "kl_loss",
           "LOSSES", "parse_losses", "student_from", "History", "TrainConfig", "distill"]
