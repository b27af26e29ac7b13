# Dr.GRPO pg-loss reducer as in Miles's example, minus the megatron context-parallel assert.
import torch

DIVISOR = 1000.0
CALLS = []


def get_pg_loss_reducer(total_lengths, response_lengths, loss_masks, calculate_per_token_loss=False):
    CALLS.append(list(response_lengths))

    if calculate_per_token_loss:

        def sum_of_token(x: torch.Tensor) -> torch.Tensor:
            return sum((x_i * m).sum() for x_i, m in zip(x.split(response_lengths, dim=0), loss_masks))

        return sum_of_token

    def sum_of_sample_mean(x: torch.Tensor) -> torch.Tensor:
        return sum((x_i * m).sum() / DIVISOR for x_i, m in zip(x.split(response_lengths, dim=0), loss_masks))

    return sum_of_sample_mean
