// Tokenizes a file with llama.cpp's tokenizer from a (vocab-only) GGUF and
// prints the ids, space-separated, on one line. For scripts/record-vocab-tokens.py.
//
//   llama-tokenize VOCAB.gguf TEXT_FILE ADD_SPECIAL(0|1) PARSE_SPECIAL(0|1)
#include "llama.h"

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char ** argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s VOCAB.gguf TEXT_FILE ADD_SPECIAL PARSE_SPECIAL\n", argv[0]);
        return 2;
    }
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.vocab_only = true;
    struct llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const struct llama_vocab * vocab = llama_model_get_vocab(model);

    FILE * f = fopen(argv[2], "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", argv[2]);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    const long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char * text = malloc(n + 1);
    if (fread(text, 1, n, f) != (size_t) n) {
        fprintf(stderr, "short read on %s\n", argv[2]);
        return 1;
    }
    fclose(f);

    const int cap = (int) n + 16;  // at most one token per byte, plus BOS/EOS
    llama_token * ids = malloc(sizeof(llama_token) * cap);
    const int k = llama_tokenize(vocab, text, (int) n, ids, cap, atoi(argv[3]), atoi(argv[4]));
    if (k < 0) {
        fprintf(stderr, "llama_tokenize failed (%d)\n", k);
        return 1;
    }
    for (int i = 0; i < k; i++) {
        printf("%d%s", ids[i], i + 1 < k ? " " : "");
    }
    printf("\n");
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
