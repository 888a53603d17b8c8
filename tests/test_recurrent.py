"""Recurrent layers: hidden units keep their gate blocks aligned; multi-layer, bidirectional,
batch_first either way; the scatter-back oracle holds (zero initial states)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from helpers import prune_and_check


class WordLM(nn.Module):
    """Embedding -> 2-layer LSTM -> linear over the vocabulary."""

    def __init__(self, vocab=50, emb=16, hidden=24, batch_first=True):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.rnn = nn.LSTM(emb, hidden, num_layers=2, batch_first=batch_first)
        self.out = nn.Linear(hidden, vocab)

    def forward(self, ids):
        y, _ = self.rnn(self.embed(ids))
        return self.out(y)


class BiGRUClassifier(nn.Module):
    def __init__(self, features=10, hidden=12, classes=3):
        super().__init__()
        self.proj = nn.Linear(features, 16)
        self.rnn = nn.GRU(16, hidden, num_layers=2, bidirectional=True)
        self.head = nn.Linear(2 * hidden, classes)

    def forward(self, x):  # [time, batch, features]
        y, _ = self.rnn(torch.tanh(self.proj(x)))
        return self.head(y.mean(0))


IDS = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("batch_first", [True, False])
def test_lstm_language_model(batch_first):
    torch.manual_seed(0)
    model = WordLM(batch_first=batch_first).double().eval()
    ids = IDS if batch_first else IDS.t().contiguous()
    pruned, result = prune_and_check(model, ids, ratio=0.5)
    rnn = pruned.rnn
    assert rnn.hidden_size == 12 and rnn.input_size == 8
    for layer in range(2):
        w_ih, w_hh = getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}")
        assert w_hh.shape == (4 * 12, 12) and w_ih.shape[0] == 48
    # a hidden unit removes its row in every gate: rows k, H + k, 2H + k, 3H + k
    kept = result.plan["rnn.weight_hh_l0"][0].view(4, 12)
    assert torch.equal(kept - kept[0], torch.arange(4).view(4, 1).expand(4, 12) * 24)
    assert pruned(ids).shape[-1] == 50


def test_bidirectional_gru_classifier():
    torch.manual_seed(0)
    model = BiGRUClassifier().double().eval()
    x = torch.randn(6, 4, 10, dtype=torch.float64)
    pruned, result = prune_and_check(model, x, ratio=0.5)
    assert pruned.rnn.hidden_size == 6
    assert pruned.head.in_features == 12 and pruned.rnn.weight_ih_l1.shape == (18, 12)
    assert pruned.proj.out_features == 8 and pruned.rnn.input_size == 8


def test_plain_rnn_relu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.RNN(8, 10, nonlinearity="relu", batch_first=True))

    class Last(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = model, nn.Linear(10, 2)

        def forward(self, x):
            return self.head(self.body(x)[0][:, -1])

    pruned, _ = prune_and_check(
        Last().double().eval(), torch.randn(2, 4, 5, dtype=torch.float64), ratio=0.5
    )
    assert pruned.body[1].hidden_size == 5


def test_lstm_with_projections():
    """PyTorch runs projected LSTMs as primitive ops; hidden units and projections both prune."""

    class Projected(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 8)
            self.rnn = nn.LSTM(8, 6, proj_size=4, num_layers=2)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.rnn(self.proj(x))[0])

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "not supported with oneDNN"
        pruned, _ = prune_and_check(
            Projected().double().eval(), torch.randn(5, 2, 4, dtype=torch.float64), ratio=0.5
        )
    rnn = pruned.rnn
    assert (rnn.hidden_size, rnn.proj_size, rnn.input_size) == (3, 2, 4)
    assert rnn.weight_hr_l1.shape == (2, 3) and rnn.weight_ih_l1.shape == (12, 2)


class CellLoop(nn.Module):
    """A cell stepped over a sequence from a zero state, between two linear layers."""

    def __init__(self, cell: type) -> None:
        super().__init__()
        self.pre, self.cell, self.post = nn.Linear(5, 12), cell(12, 8), nn.Linear(8, 3)

    def forward(self, x):
        state = None
        for t in range(x.shape[1]):
            state = self.cell(self.pre(x[:, t]), state)
        h = state[0] if isinstance(state, tuple) else state
        return self.post(h)


@pytest.mark.parametrize("cell", [nn.LSTMCell, nn.GRUCell])
def test_a_cells_sizes_follow_its_pruned_weights(cell):
    torch.manual_seed(0)
    model = CellLoop(cell).double().eval()
    x = torch.randn(2, 4, 5, dtype=torch.float64)
    pruned, _ = prune_and_check(model, x, ratio=0.5)
    c = pruned.cell
    assert c.weight_ih.shape[1] < 12
    assert (c.input_size, c.hidden_size) == (c.weight_ih.shape[1], c.weight_hh.shape[1])


def test_an_adaptive_log_softmax_in_features_follow_its_head():
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pre = nn.Linear(5, 12)
            self.asm = nn.AdaptiveLogSoftmaxWithLoss(12, 10, cutoffs=[4, 8], div_value=2.0)

        def forward(self, x):
            return self.asm.log_prob(torch.relu(self.pre(x)))

    model = Net().double().eval()
    x = torch.randn(3, 5, dtype=torch.float64)
    pruned, _ = prune_and_check(model, x, ratio=0.5)
    assert pruned.asm.in_features == pruned.asm.head.weight.shape[1] < 12


class OneStep(nn.Module):
    """A cell stepped once from no state (it makes a zero state of ``hidden_size``)."""

    def __init__(self, cell: type) -> None:
        super().__init__()
        self.pre, self.cell, self.post = nn.Linear(5, 6), cell(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        state = self.cell(self.pre(x))
        return self.post(state[0] if isinstance(state, tuple) else state)


@pytest.mark.parametrize("cell", [nn.RNNCell, nn.GRUCell, nn.LSTMCell])
def test_a_cell_stepped_once_prunes_its_state_whole(cell):
    """nn.RNNCell's recurrent weight is square by a check in C++ that no traced op shows: its
    rows and columns prune together (the rows alone made a cell that did not run)."""
    torch.manual_seed(0)
    model = OneStep(cell).double().eval()
    x = torch.randn(2, 5, dtype=torch.float64)
    pruned, _ = prune_and_check(model, x, ratio=0.5)
    c, gates = pruned.cell, {nn.RNNCell: 1, nn.GRUCell: 3, nn.LSTMCell: 4}[cell]
    assert c.weight_ih.shape[0] == c.weight_hh.shape[0] == gates * c.hidden_size
    assert c.weight_hh.shape[1] == c.hidden_size


@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_packed_sequences_prune_their_features(kind):
    """pack_padded_sequence -> a recurrent layer -> pad_packed_sequence: the packed data keeps
    the features of the padded batch, so the layer's input width prunes as well as its hidden
    width."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    class Packed(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(5, 12)
            self.rnn = getattr(nn, kind)(12, 10, batch_first=True)
            self.head = nn.Linear(10, 3)

        def forward(self, x, lengths):
            packed = pack_padded_sequence(torch.tanh(self.inp(x)), lengths, batch_first=True)
            out, _ = self.rnn(packed)
            return self.head(pad_packed_sequence(out, batch_first=True, total_length=6)[0])

    torch.manual_seed(0)
    x, lengths = torch.randn(3, 6, 5, dtype=torch.float64), torch.tensor([6, 4, 2])
    pruned, _ = prune_and_check(Packed().double().eval(), (x, lengths), ratio=0.5)
    assert pruned.inp.out_features == 6 and pruned.rnn.input_size == 6
    assert pruned.rnn.hidden_size == 5


class _PackedIn(nn.Module):
    """An LSTM whose forward takes a PackedSequence, its last hidden state classified."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm, self.fc = nn.LSTM(8, 16), nn.Linear(16, 3)

    def forward(self, packed):
        _, (h, _) = self.lstm(packed)
        return self.fc(h[-1])


def test_a_packed_sequence_given_alone_is_one_input():
    """A PackedSequence is a named tuple: given as the example inputs it is the one input it
    is (it was taken for four positional ones, and the trace failed), the same prune as
    ``(packed,)``."""
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    model = _PackedIn().double()  # (prune_and_check prunes copies)
    packed = pack_padded_sequence(torch.randn(5, 2, 8).double(), torch.tensor([5, 3]))
    plans = [prune_and_check(model, inputs, ratio=0.5)[1].plan for inputs in (packed, (packed,))]
    assert plans[0].keys() == plans[1].keys() and "lstm.weight_hh_l0" in plans[0]
    for name, dims in plans[0].items():
        assert all(torch.equal(kept, plans[1][name][d]) for d, kept in dims.items()), name
