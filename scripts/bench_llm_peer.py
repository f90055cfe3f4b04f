"""The llama.cpp side of scripts/bench_llm.sh: the same GGUF, prompts, thread count, context and batch size as
device-daemon/examples/bench_llm.rs, measured in-process through llama.cpp's Python binding (no HTTP).

    python scripts/bench_llm_peer.py MODEL.gguf THREADS

Prints the time to first token of the same 128-token prompt (10 runs after a warm-up, the KV cache emptied before
each so nothing of the previous run is reused) and one stream's decoding speed (3 runs of up to 128 tokens,
tokens after the first over the time they took), in the daemon's words so the two can be read side by side.
"""

import statistics
import sys
import time

import llama_cpp

PROMPT_WORDS = "The lighthouse keeper wrote in his log every evening about the ships, the weather and the sea. " * 20
DECODE_PROMPT = "Count from one to three hundred, in words, separated by commas:"


def main() -> None:
    path, threads = sys.argv[1], int(sys.argv[2])
    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=1024,
        n_batch=256,
        n_ubatch=256,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    print(f"llama-cpp-python {llama_cpp.__version__}, llama.cpp system info: {llama_cpp.llama_print_system_info().decode()}")

    # The same cut as the daemon's bench: the longest prefix of the text that is at most 128 tokens with <bos>.
    prompt = PROMPT_WORDS
    while len(llm.tokenize(prompt.encode(), add_bos=True)) > 128:
        prompt = prompt[:-1]
    prompt_tokens = llm.tokenize(prompt.encode(), add_bos=True)

    def stream(tokens, max_tokens):
        """(time to first token, time of the last token, tokens generated) of one greedy generation."""
        llm.reset()
        start = time.perf_counter()
        first = last = None
        n = 0
        for token in llm.generate(tokens, temp=0.0, top_k=1, reset=True):
            now = time.perf_counter()
            first = first or now
            last = now
            n += 1
            if token == llm.token_eos() or n >= max_tokens:
                break
        return first - start, last - start, n

    stream(prompt_tokens, 1)
    ttft = sorted(stream(prompt_tokens, 1)[0] * 1e3 for _ in range(10))
    print(
        f"TTFT, {len(prompt_tokens)}-token prompt in-process: median {statistics.median(ttft):.1f} ms, "
        f"min {ttft[0]:.1f} ms (10 runs)"
    )
    decode_tokens = llm.tokenize(DECODE_PROMPT.encode(), add_bos=True)
    speeds = []
    for _ in range(3):
        first, last, n = stream(decode_tokens, 128)
        if n > 1:
            speeds.append((n - 1) / (last - first))
    print(f"decode, one stream: median {statistics.median(speeds):.1f} tokens/s (3 runs of up to 128 tokens)")


if __name__ == "__main__":
    main()
