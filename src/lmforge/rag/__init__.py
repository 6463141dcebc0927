"""Retrieval-augmented generation: documents → chunks → embeddings in Milvus → retrieval → answers.

    lmforge index --db rag.db --collection notes docs/
    lmforge search --db rag.db --collection notes "how are chunks made?" -k 5
    lmforge ask --model smollm2 --db rag.db --collection notes "how are chunks made?"

Modules, in the order data flows through them:

- `documents`: text out of .txt / .md / .html / .pdf files, confined to a root, bad inputs refused.
- `chunking`: token-counted chunks with an overlap of whole sentences.
- `embedder`: an lmforge encoder (`minilm` by default) as a text → unit-vector function.
- `store`: the vector database (`pymilvus`: Milvus Lite on a file path, a Milvus server on a URI).
- `index`: incremental indexing by content hash, resumable without duplicates.
- `bm25`, `retrieve`: keyword, dense and hybrid (reciprocal rank fusion) retrieval, MMR.
- `answer`: numbered passages in the prompt, a streamed answer with [n] citations.
"""
