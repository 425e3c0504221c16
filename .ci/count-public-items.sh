#!/usr/bin/env bash
# Public items of the SDK's library sources, by grep (not tests/, examples/, bin/; a file's
# `#[cfg(test)] mod …` tail is cut): lines `pub fn|struct|enum|trait|type|const|static|mod|use …` and
# `pub field: …` (pub(crate)/pub(super) excluded), minus items right after a
# `#[cfg(…feature = "testing"…)]` attribute (not public in a normal build).
# Usage: .ci/count-public-items.sh sdk
dir=${1:-sdk}
total=0; runtime=0
while IFS= read -r f; do
  n=$(awk 'cut {exit}
           /^#\[cfg\(test\)\]/{t=1; next}
           t && /^(pub(\(crate\))? )?mod /{cut=1; next}
           t {t=0; gated=1}
           /#\[cfg\((any\(test, )?feature = "testing"\)?\)\]/{gated=1; next}
           /^\s*(\/\/\/|#\[)/{print; next}
           {if (gated) {gated=0; next}; print}' "$f" \
      | grep -cE '^\s*pub (async )?(fn|struct|enum|trait|type|const|static|mod|use|[a-z_]+:)')
  total=$((total+n))
  case "$f" in */runtime/*) runtime=$((runtime+n));; esac
done < <(find "$dir" -name '*.rs' -path '*src*' -not -path '*/bin/*' -not -path '*/tests/*' -not -path '*/examples/*' | sort)
echo "public items (grep): total=$total runtime=$runtime"
