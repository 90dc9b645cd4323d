"""Peer measurements for `eerag bench --peers`, run in the venv the command made.

Reads a workload (JSON) written by eerag: the sentences, the batch size, the
prompt's token ids, the decode length, the model paths and the thread count.
Measures what the peers do with the same public weights on the same machine:

- sentence-transformers (PyTorch, CPU): sentences/s embedding the sentences
  with all-MiniLM-L6-v2 (mean pooling, L2 normalisation, as eerag does);
- llama.cpp through llama-cpp-python: prefill and greedy decode tokens/s of
  SmolLM2-135M-Instruct (the same Q4_1 GGUF) on the same prompt ids.

Writes one JSON object to the file named by its third argument. A peer that is not installed is reported as skipped
with the reason; the caller prints it.
"""

import json
import statistics
import sys
import time


def sentence_transformers_peer(work):
    try:
        import torch
        from sentence_transformers import SentenceTransformer, models
    except Exception as e:  # noqa: BLE001 - any import failure means "skip"
        return {"skipped": f"sentence-transformers not importable: {e}"}
    torch.set_num_threads(work["threads"])
    encoder = models.Transformer(work["encoder_dir"], max_seq_length=work["max_seq_length"])
    pooling = models.Pooling(encoder.get_word_embedding_dimension(), pooling_mode="mean")
    model = SentenceTransformer(modules=[encoder, pooling, models.Normalize()], device="cpu")
    sentences = work["sentences"]
    batch = work["batch"]
    model.encode(sentences[:batch], batch_size=batch)  # warm-up
    times = []
    embeddings = None
    for _ in range(work["rounds"]):
        t = time.perf_counter()
        embeddings = model.encode(sentences, batch_size=batch, convert_to_numpy=True)
        times.append(time.perf_counter() - t)
    return {
        "version": __import__("sentence_transformers").__version__,
        "torch": torch.__version__,
        "seconds": times,
        "sentences_per_s": len(sentences) / statistics.median(times),
        "embeddings": embeddings.tolist(),
    }


def llama_cpp_peer(work):
    try:
        import llama_cpp
        import numpy as np
    except Exception as e:  # noqa: BLE001
        return {"skipped": f"llama-cpp-python not importable: {e}"}
    prompt = work["prompt_ids"]
    n = work["decode_tokens"]
    llm = llama_cpp.Llama(
        model_path=work["generator_gguf"],
        n_ctx=max(512, len(prompt) + n + 8),
        n_batch=512,
        n_threads=work["threads"],
        n_threads_batch=work["threads"],
        logits_all=False,
        verbose=False,
    )
    vocab = llm.n_vocab()
    prefill, decode, tokens = [], [], []
    for _ in range(work["rounds"] + 1):  # the first round warms up
        llm.reset()  # no prompt-prefix reuse between rounds
        t = time.perf_counter()
        llm.eval(prompt)
        t_prefill = time.perf_counter() - t
        out = []
        t = time.perf_counter()
        for _ in range(n):
            # The last position's logits, read as llama-cpp-python itself
            # does (its `scores` stay empty unless logits_all is set).
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(vocab,))
            token = int(logits.argmax())
            out.append(token)
            llm.eval([token])
        t_decode = time.perf_counter() - t
        prefill.append(t_prefill)
        decode.append(t_decode)
        tokens = out
    prefill, decode = prefill[1:], decode[1:]
    return {
        "version": llama_cpp.__version__,
        "prefill_seconds": prefill,
        "decode_seconds": decode,
        "prefill_tokens_per_s": len(prompt) / statistics.median(prefill),
        "decode_tokens_per_s": n / statistics.median(decode),
        "tokens": tokens,
    }


def guarded(peer, work):
    # A peer that fails at run time is skipped with the reason; the other
    # peer's figures still count.
    try:
        return peer(work)
    except Exception as e:  # noqa: BLE001
        return {"skipped": f"{type(e).__name__}: {e}"}


def main():
    with open(sys.argv[1]) as f:
        work = json.load(f)
    wanted = sys.argv[2].split(",")
    out = {}
    if "sentence-transformers" in wanted:
        out["sentence_transformers"] = guarded(sentence_transformers_peer, work)
    if "llama-cpp" in wanted:
        out["llama_cpp"] = guarded(llama_cpp_peer, work)
    # To a file: libraries may print to stdout.
    with open(sys.argv[3], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
