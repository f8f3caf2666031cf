// Draws a page's line charts (Chart.js) from the JSON that #charts names: the
// overview's daily metrics, a segment's size. One chart per canvas, a line
// per stage or metric.
(function () {
  "use strict";
  const holder = document.getElementById("charts");
  if (!holder) {
    return;
  }
  const colours = ["#2563eb", "#16a34a", "#d97706", "#dc2626", "#7c3aed", "#0891b2"];

  function chart(canvas, days, lines) {
    if (Object.keys(lines).length === 0) {
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = "No data in this range.";
      canvas.replaceWith(empty);
      return;
    }
    const datasets = Object.entries(lines).map(function ([label, points], index) {
      return {
        label: label,
        data: days.map(function (day) { return points[day] || 0; }),
        borderColor: colours[index % colours.length],
        backgroundColor: colours[index % colours.length],
        tension: 0.2,
        pointRadius: 0,
      };
    });
    new Chart(canvas, {
      type: "line",
      data: { labels: days, datasets: datasets },
      options: {
        animation: false,
        responsive: true,
        maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false },
      },
    });
  }

  async function draw() {
    const reply = await fetch(holder.dataset.source, { headers: { Accept: "application/json" } });
    if (!reply.ok) {
      throw new Error("HTTP " + reply.status);
    }
    const data = await reply.json();
    for (const canvas of holder.querySelectorAll("canvas[data-chart]")) {
      chart(canvas, data.days, data.charts[canvas.dataset.chart] || {});
    }
    holder.dataset.drawn = "true";
  }

  draw().catch(function (error) {
    const problem = document.getElementById("charts-problem");
    problem.textContent = "The charts could not be drawn: " + error.message;
    problem.hidden = false;
  });
})();
