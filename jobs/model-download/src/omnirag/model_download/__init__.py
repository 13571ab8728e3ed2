"""omnirag.model_download: fetch model snapshots from Hugging Face or ModelScope into a directory.

The job is safe to re-run and to kill at any moment:

* **Completion marker.** ``<dest>/.omnirag-download.json`` appears — by an atomic rename, after every
  file has been fsynced, checked against the hub's size and hash, and moved into place — and at no
  other time. It is removed before the job changes anything in a directory it once completed. A
  consumer (the chart's vLLM pod, the embedder) waits for this file and then reads ``dest``::

      until [ -f /models/Qwen/Qwen2.5-7B-Instruct/.omnirag-download.json ]; do sleep 5; done

  Its content (JSON, ``format`` ``omnirag-model-download/v1``)::

      {"format": "omnirag-model-download/v1",
       "name": "llm", "source": "huggingface", "repo": "Qwen/Qwen2.5-7B-Instruct",
       "endpoint": "https://huggingface.co",
       "revision": "main",                          # as asked
       "resolved_revision": "<40-hex commit>",      # what it pointed at; null on ModelScope
       "content_digest": "sha256:<hex>",            # over the sorted (path, size, hash) list
       "allow_patterns": [...], "ignore_patterns": [...],
       "files": [{"path": "config.json", "size": 663, "sha256": null, "git_sha1": "<hex>"}, ...],
       "file_count": 12, "total_bytes": 15231272152,
       "completed_at": "2025-01-01T00:00:00Z", "downloaded_by": "omnirag-model-download 0.1.0"}

* **Idempotent.** When the marker matches the request (source, repo, revision, patterns) and every
  file it lists is present with its size, a run makes no network request at all. With
  ``MODEL_DOWNLOAD_REFRESH=true`` it asks the hub which commit the branch points at now and fetches
  only files whose content changed (none when the commit is the same).
* **Resumable.** Partial files live in ``<dest>/.omnirag-download/partial/``, one per (path, content
  hash); the next run continues each with an HTTP ``Range`` request. Finished files are journalled,
  so they are not fetched again either.
"""

__version__ = "0.1.0"

MARKER_NAME = ".omnirag-download.json"
WORK_DIR_NAME = ".omnirag-download"
MARKER_FORMAT = "omnirag-model-download/v1"
