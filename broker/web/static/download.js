/* «Télécharger mes données», with JavaScript: fetch each holder's file with its one-time
   token (POST, the token in the body) and assemble one .zip archive in the browser. The data
   go from each holder to this browser; nothing is sent to the broker. Without JavaScript the
   page's forms do the same, one holder at a time. */
"use strict";

(function () {
  var box = document.getElementById("archive");
  var forms = Array.prototype.slice.call(document.querySelectorAll("form.handover"));
  if (!box || !forms.length || !window.fetch || !window.Blob || !window.TextEncoder) {
    return;
  }
  var start = document.getElementById("archive-start");
  var status = document.getElementById("archive-status");
  var link = document.getElementById("archive-link");

  var CRC_TABLE = (function () {
    var table = new Uint32Array(256);
    for (var n = 0; n < 256; n++) {
      var c = n;
      for (var k = 0; k < 8; k++) {
        c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      }
      table[n] = c >>> 0;
    }
    return table;
  })();

  function crc32(bytes) {
    var crc = 0xffffffff;
    for (var i = 0; i < bytes.length; i++) {
      crc = CRC_TABLE[(crc ^ bytes[i]) & 0xff] ^ (crc >>> 8);
    }
    return (crc ^ 0xffffffff) >>> 0;
  }

  /* A .zip of stored (uncompressed) entries: APPNOTE 4.3, UTF-8 names (bit 11). */
  function zip(entries) {
    var encoder = new TextEncoder();
    var parts = [];
    var central = [];
    var offset = 0;
    var now = new Date();
    var time = (now.getHours() << 11) | (now.getMinutes() << 5) | (now.getSeconds() >> 1);
    var date = ((now.getFullYear() - 1980) << 9) | ((now.getMonth() + 1) << 5) | now.getDate();
    entries.forEach(function (entry) {
      var name = encoder.encode(entry.name);
      var data = entry.data;
      var crc = crc32(data);
      var local = new DataView(new ArrayBuffer(30));
      local.setUint32(0, 0x04034b50, true);
      local.setUint16(4, 20, true);
      local.setUint16(6, 0x0800, true);
      local.setUint16(8, 0, true);
      local.setUint16(10, time, true);
      local.setUint16(12, date, true);
      local.setUint32(14, crc, true);
      local.setUint32(18, data.length, true);
      local.setUint32(22, data.length, true);
      local.setUint16(26, name.length, true);
      local.setUint16(28, 0, true);
      var head = new DataView(new ArrayBuffer(46));
      head.setUint32(0, 0x02014b50, true);
      head.setUint16(4, 20, true);
      head.setUint16(6, 20, true);
      head.setUint16(8, 0x0800, true);
      head.setUint16(10, 0, true);
      head.setUint16(12, time, true);
      head.setUint16(14, date, true);
      head.setUint32(16, crc, true);
      head.setUint32(20, data.length, true);
      head.setUint32(24, data.length, true);
      head.setUint16(28, name.length, true);
      head.setUint32(42, offset, true);
      parts.push(local, name, data);
      central.push(head, name);
      offset += 30 + name.length + data.length;
    });
    var size = central.reduce(function (sum, part) { return sum + part.byteLength; }, 0);
    var end = new DataView(new ArrayBuffer(22));
    end.setUint32(0, 0x06054b50, true);
    end.setUint16(8, entries.length, true);
    end.setUint16(10, entries.length, true);
    end.setUint32(12, size, true);
    end.setUint32(16, offset, true);
    return new Blob(parts.concat(central, [end]), { type: "application/zip" });
  }

  function fetchOne(form) {
    return fetch(form.action, {
      method: "POST",
      body: new URLSearchParams(new FormData(form)),
      mode: "cors",
      credentials: "omit",
      referrerPolicy: "no-referrer",
      cache: "no-store"
    }).then(function (response) {
      if (!response.ok) {
        throw new Error(form.getAttribute("data-holder") + ": " + response.status);
      }
      return response.arrayBuffer();
    }).then(function (buffer) {
      var extension = form.getAttribute("data-format") === "html" ? ".html" : ".json";
      return { name: form.getAttribute("data-holder") + extension, data: new Uint8Array(buffer) };
    });
  }

  box.hidden = false;
  start.addEventListener("click", function () {
    start.disabled = true;
    status.textContent = "…";
    Promise.all(forms.map(fetchOne)).then(function (entries) {
      forms.forEach(function (form) { form.hidden = true; });  /* each token served once */
      link.href = URL.createObjectURL(zip(entries));
      link.hidden = false;
      status.textContent = document.getElementById("archive-done").textContent;
      link.click();
    }).catch(function () {
      status.textContent = document.getElementById("archive-failed").textContent;
    });
  });
})();
