"""Peer measurements for `eerag bench peers`, run in the venv the command made.

Reads a workload (JSON) written by eerag: the sentences, the batch size, the
prompt's token ids, the decode length, the model paths and the thread count.
Measures what the peers do with the same public weights on the same machine:

- sentence-transformers (PyTorch, CPU): seconds to embed the sentences with
  all-MiniLM-L6-v2 (mean pooling, L2 normalisation, as eerag does);
- llama.cpp through llama-cpp-python: seconds of prefill and of greedy decode
  of SmolLM2-135M-Instruct (the same Q4_1 GGUF) on the same prompt ids.

It serves rounds on request so that eerag can take turns with it, round by
round, and machine load that drifts over a run falls on both sides: after
loading (and warming up) the peers it answers one request per line read on
standard input (`{"peer": "llama-cpp"}`, `{"peer": "sentence-transformers",
"vectors": true}`, `{"op": "quit"}`), each with one line on standard output
that starts with `EERAG-PEER ` (libraries may print lines of their own). A peer
that is not installed or fails to load is reported as skipped with the reason;
the caller prints it.
"""

import json
import sys
import time

REPLY = "EERAG-PEER "


def reply(obj):
    sys.stdout.write(REPLY + json.dumps(obj) + "\n")
    sys.stdout.flush()


class SentenceTransformersPeer:
    def __init__(self, work):
        import torch
        from sentence_transformers import SentenceTransformer, models

        torch.set_num_threads(work["threads"])
        encoder = models.Transformer(work["encoder_dir"], max_seq_length=work["max_seq_length"])
        pooling = models.Pooling(encoder.get_word_embedding_dimension(), pooling_mode="mean")
        self.model = SentenceTransformer(
            modules=[encoder, pooling, models.Normalize()], device="cpu"
        )
        self.sentences = work["sentences"]
        self.batch = work["batch"]
        self.model.encode(self.sentences[: self.batch], batch_size=self.batch)  # warm-up
        self.info = {
            "version": __import__("sentence_transformers").__version__,
            "torch": torch.__version__,
        }

    def run(self, request):
        t = time.perf_counter()
        embeddings = self.model.encode(
            self.sentences, batch_size=self.batch, convert_to_numpy=True
        )
        out = {"seconds": time.perf_counter() - t}
        if request.get("vectors"):
            out["embeddings"] = embeddings.tolist()
        return out


class LlamaCppPeer:
    def __init__(self, work):
        import llama_cpp
        import numpy as np

        self.np = np
        self.prompt = work["prompt_ids"]
        self.decode_tokens = work["decode_tokens"]
        self.llm = llama_cpp.Llama(
            model_path=work["generator_gguf"],
            n_ctx=max(512, len(self.prompt) + self.decode_tokens + 8),
            n_batch=512,
            n_threads=work["threads"],
            n_threads_batch=work["threads"],
            logits_all=False,
            verbose=False,
        )
        self.vocab = self.llm.n_vocab()
        self.run({})  # warm-up
        self.info = {"version": llama_cpp.__version__}

    def run(self, _request):
        llm = self.llm
        llm.reset()  # no prompt-prefix reuse between rounds
        t = time.perf_counter()
        llm.eval(self.prompt)
        prefill = time.perf_counter() - t
        tokens = []
        t = time.perf_counter()
        for _ in range(self.decode_tokens):
            # The last position's logits, read as llama-cpp-python itself
            # does (its `scores` stay empty unless logits_all is set).
            logits = self.np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(self.vocab,))
            token = int(logits.argmax())
            tokens.append(token)
            llm.eval([token])
        decode = time.perf_counter() - t
        return {"prefill_seconds": prefill, "decode_seconds": decode, "tokens": tokens}


PEERS = {
    "sentence-transformers": SentenceTransformersPeer,
    "llama-cpp": LlamaCppPeer,
}


def main():
    with open(sys.argv[1]) as f:
        work = json.load(f)
    wanted = sys.argv[2].split(",")
    peers, ready = {}, {}
    for name in wanted:
        try:
            peers[name] = PEERS[name](work)
            ready[name] = peers[name].info
        except Exception as e:  # noqa: BLE001 - any failure to load means "skip"
            ready[name] = {"skipped": f"{type(e).__name__}: {e}"}
    reply({"ready": ready})
    for line in sys.stdin:
        request = json.loads(line)
        if request.get("op") == "quit":
            break
        name = request.get("peer")
        try:
            reply(peers[name].run(request))
        except Exception as e:  # noqa: BLE001 - reported, the caller skips the peer
            reply({"error": f"{type(e).__name__}: {e}"})


if __name__ == "__main__":
    main()
