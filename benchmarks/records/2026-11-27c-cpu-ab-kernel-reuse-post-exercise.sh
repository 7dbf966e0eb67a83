set -x
R=/work/wf/results
fit=full/bergman1981_ivgtt; m=full; d=bergman1981_ivgtt
for side in old new new2; do
  if [ $side = old ]; then cd /work/wf; PY=/work/wf/.venv/bin; else cd /work/main; PY=/work/main/.venv/bin; fi
  /usr/bin/time -f "%e s" -o /tmp/s13/ab/predict_${side}.time $PY/myoglucose predict --posterior $R/fits/$fit/posterior.nc --tidy-dir $R/tidy/$d --model models/$m --config $R/config.resolved.yaml --out /tmp/s13/ab/predict_${side}.nc > /tmp/s13/ab/predict_${side}.log 2>&1
done
for fit in core/sorensen1985_civii core/katz2000_clamp; do
  m=${fit%%/*}; d=${fit##*/}
  for side in old new; do
    if [ $side = old ]; then cd /work/wf; PY=/work/wf/.venv/bin; else cd /work/main; PY=/work/main/.venv/bin; fi
    /usr/bin/time -f "%e s" -o /tmp/s13/ab/fit_${side}_${m}_${d}.time $PY/myoglucose fit --tidy-dir $R/tidy/$d --model models/$m --config $R/config.resolved.yaml --out /tmp/s13/ab/fit_${side}_${m}_${d}.nc > /tmp/s13/ab/fit_${side}_${m}_${d}.log 2>&1
  done
done
echo done > /tmp/s13/ab/ALLDONE
